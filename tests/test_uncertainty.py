"""Intervals and paired tests: nominal coverage in simulation, identical methods never marked,
and the marks in every table format."""

from __future__ import annotations

import numpy as np

from hashbench.report.intervals import bootstrap_interval, paired_test
from hashbench.report.tables import write_report
from hashbench.run.runner import GridSpec, run_grid


def _cell(rng, mean: float, queries: int = 150, seeds: int = 3, query_sd: float = 0.25, seed_sd: float = 0.01):
    """Per-seed per-query values around ``mean``: a query effect shared by the seeds plus a
    small seed effect and noise, as the runs of one cell on one split."""
    query_effect = rng.normal(0, query_sd, queries)
    return [mean + query_effect + rng.normal(0, seed_sd) + rng.normal(0, 0.05, queries) for _ in range(seeds)]


def test_the_interval_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    trials = 120
    covered = sum(bootstrap_interval(_cell(rng, 0.6), draws=600, seed=t).covers(0.6) for t in range(trials))
    assert 0.86 <= covered / trials <= 0.995, covered


def test_the_paired_interval_covers_a_known_difference_and_the_test_finds_it():
    rng = np.random.default_rng(2)
    trials, difference = 100, 0.03
    covered = found = 0
    for trial in range(trials):
        shared = rng.normal(0.5, 0.25, 200)  # the queries' difficulty, common to both methods
        a = {s: shared + difference + rng.normal(0, 0.1, 200) for s in range(2)}
        b = {s: shared + rng.normal(0, 0.1, 200) for s in range(2)}
        result = paired_test(a, b, permutations=400, draws=400, seed=trial)
        covered += result.interval.covers(difference)
        found += result.p_value < 0.05
    assert 0.86 <= covered / trials <= 0.995, covered
    assert found / trials > 0.9  # a difference of 3 points over 200 queries is plain to see


def test_equal_methods_are_rarely_called_different_and_identical_ones_never():
    rng = np.random.default_rng(3)
    trials = 150
    false_alarms = 0
    for trial in range(trials):
        shared = rng.normal(0.5, 0.25, 150)
        a = {0: shared + rng.normal(0, 0.1, 150)}
        b = {0: shared + rng.normal(0, 0.1, 150)}
        false_alarms += paired_test(a, b, permutations=300, draws=50, seed=trial).p_value < 0.05
        assert paired_test(a, a, permutations=300, draws=50, seed=trial).p_value == 1.0
    assert false_alarms / trials <= 0.1, false_alarms


def test_tables_carry_intervals_and_marks_in_every_format(tmp_path):
    results = tmp_path / "results"
    # Two close ITQ settings (20 and 30 iterations: 0.7975 and 0.7965) and a clearly worse LSH.
    run_grid(GridSpec(methods=["lsh"], bits=[16], seeds=[0, 1], results=results))
    for iterations in (20, 30):
        run_grid(GridSpec(methods=["itq"], bits=[16], seeds=[0, 1], params={"itq": {"iterations": iterations}}, results=results))
    table, paths, _ = write_report(results, tmp_path / "report", "map", plots=False)
    cells = {row: table.cell_text(row, ("digits", 16)) for row in table.mean.index}
    assert all("[" in text for text in cells.values())
    best = table.best()[("digits", 16)]
    (leader,) = [row for row in best.index if best[row]]
    (close,) = [row for row in cells if row.startswith("itq") and row != leader]
    assert cells[close].endswith("†") and not cells["lsh"].endswith("†") and not cells[leader].endswith("†")
    assert "† not distinguishable" in paths["markdown"].read_text() and f"{cells[close]} |" in paths["markdown"].read_text()
    assert r"$^\dagger$" in paths["latex"].read_text()
    assert "†" in paths["html"].read_text()
    csv = paths["csv"].read_text().splitlines()
    assert csv[0].endswith("ci_low,ci_high,best,indistinguishable_from_best")
