"""Deep methods learn: a short run on digits beats the same model untrained, and LSH.

Each deep method trains briefly on digits (tiny profile, one CPU thread) through the runner.
Its mAP@100 must beat

* its own untrained start: the same run with one epoch at a learning rate of 1e-12, so the
  weights stay where the seed put them (same seed, same initialisation), and
* LSH at the same code length,

and its training loss must fall between the first and the last epochs. A method that climbs
its loss instead of descending it (a flipped sign) fails all three.
"""

from __future__ import annotations

import pytest
from digits_runs import run_record

# The untrained start: one epoch whose steps cannot move the weights.
UNTRAINED = {"epochs": 1, "lr": 1e-12}
# Margins on mAP@100 (digits, 300 queries): trained runs are 0.6-0.75, untrained 0.3-0.57,
# LSH about 0.51; a method ascending its loss ends at 0.13-0.45.
OVER_UNTRAINED = 0.05
OVER_LSH = 0.02
LOSS_DROP = 0.95  # last epochs' mean loss below 95 % of the first epochs'

# method → (short training, the curve entry holding the loss it descends)
SHORT_RUNS = {
    "cibhash": ({"epochs": 5, "eval_every": 0, "cpu_threads": 1}, "loss"),
    "clhash": ({"epochs": 5, "eval_every": 0, "cpu_threads": 1}, "loss"),
    "greedyhash": ({"epochs": 20, "eval_every": 0, "cpu_threads": 1}, "loss"),
    # Bi-half's backward adds γ(u − b) to the gradient of its similarity loss, so with the
    # default γ = 6 the reported loss need not fall; γ = 0 trains on the loss alone (the
    # default γ is checked to learn below).
    "bihalf": ({"epochs": 40, "eval_every": 0, "gamma": 0.0, "cpu_threads": 1}, "similarity"),
    "tbh": ({"epochs": 100, "eval_every": 0, "cpu_threads": 1}, "reconstruction"),
    "bgan": ({"epochs": 2, "eval_every": 0, "cpu_threads": 1}, "encoder"),
}


def _map(record: dict) -> float:
    return float(record["metrics"]["map"])


def _losses(record: dict, term: str) -> list[float]:
    return [float(entry[term]) for entry in record["training"]["curve"]]


@pytest.fixture(scope="module")
def lsh_map(tmp_path_factory) -> float:
    return _map(run_record("lsh", {}, tmp_path_factory.mktemp("lsh")))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("method", sorted(SHORT_RUNS))
def test_a_short_run_beats_the_untrained_model_and_lsh_and_its_loss_falls(method, device, lsh_map, tmp_path):
    params, term = SHORT_RUNS[method]
    untrained = _map(run_record(method, {**params, **UNTRAINED}, tmp_path / "untrained", device))
    record = run_record(method, params, tmp_path / "trained", device)
    assert record["training"]["device"].startswith(device)
    trained = _map(record)
    losses = _losses(record, term)
    assert len(losses) == params["epochs"]
    window = max(1, len(losses) // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < LOSS_DROP * first, f"{method}: {term} went from {first:.4g} to {last:.4g}"
    assert trained > untrained + OVER_UNTRAINED, f"{method}: mAP {trained:.3f}, untrained {untrained:.3f}"
    assert trained > lsh_map + OVER_LSH, f"{method}: mAP {trained:.3f}, LSH {lsh_map:.3f}"


def test_bihalf_with_its_default_gamma_learns(lsh_map, tmp_path):
    params = {"epochs": 20, "eval_every": 0, "cpu_threads": 1}
    untrained = _map(run_record("bihalf", {**params, **UNTRAINED}, tmp_path / "untrained"))
    trained = _map(run_record("bihalf", params, tmp_path / "trained"))
    assert trained > untrained + OVER_UNTRAINED and trained > lsh_map + OVER_LSH, (trained, untrained, lsh_map)
