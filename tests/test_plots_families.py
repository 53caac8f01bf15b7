"""A report of many methods draws one row of panels per method family (small multiples):
each row's lines and legend hold that family's methods only, every method keeps one colour
in every figure, and no legend lies over a panel."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from hashbench.report import plots
from hashbench.report.tables import read_records
from hashbench.run.runner import GridSpec, run_grid

FAMILIES = {"lsh": "classic", "itq": "classic", "greedyhash": "similarity", "bihalf": "similarity"}


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    results = tmp_path_factory.mktemp("families") / "results"
    run_grid(GridSpec(methods=list(FAMILIES), bits=[8, 16], seeds=[0], results=results))
    records, _ = read_records(results)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "GROUP_ABOVE", 3)  # four methods count as many here
        yield plots.make_plots(records)


def _drawn(axes) -> dict[str, str]:
    return {line.get_label(): to_hex(line.get_color()) for line in axes.get_lines() if not line.get_label().startswith("_")}


def _overlaps(box, other) -> bool:
    return box.x0 < other.x1 and other.x0 < box.x1 and box.y0 < other.y1 and other.y0 < box.y1


def test_each_family_gets_its_own_row_of_panels_with_its_own_legend(grouped):
    for plot in grouped:
        if plot.kind == "map_vs_bits":
            continue
        rows = plot.figure.axes
        assert len(rows) == 4  # two families × two code lengths
        for row, family in ((rows[:2], "classic"), (rows[2:], "similarity")):
            members = {method for method, kind in FAMILIES.items() if kind == family}
            for axes in row:
                assert set(_drawn(axes)) == members, (plot.kind, family)
                assert axes.get_title().endswith(f"· {family}")
            legend = row[-1].get_legend()
            assert {text.get_text() for text in legend.get_texts()} == members
            assert legend.get_title().get_text() == family
        # the series behind the figure still hold every method, per code length
        assert set(plot.data) == {8, 16} and all(set(series) == set(FAMILIES) for series in plot.data.values())


def test_map_vs_bits_puts_the_families_side_by_side_on_one_scale(grouped):
    (plot,) = [p for p in grouped if p.kind == "map_vs_bits"]
    classic, similarity = plot.figure.axes
    assert set(_drawn(classic)) == {"lsh", "itq"} and set(_drawn(similarity)) == {"greedyhash", "bihalf"}
    assert classic.get_ylim() == similarity.get_ylim()


def test_a_method_keeps_its_colour_everywhere_and_no_legend_covers_a_panel(grouped):
    colours: dict[str, str] = {}
    for plot in grouped:
        renderer = plot.figure.canvas.get_renderer()
        plot.figure.draw_without_rendering()
        panels = [axes.get_window_extent(renderer) for axes in plot.figure.axes]
        for axes in plot.figure.axes:
            for label, colour in _drawn(axes).items():
                assert colours.setdefault(label, colour) == colour, (plot.kind, label)
            legend = axes.get_legend()
            if legend is not None:
                box = legend.get_window_extent(renderer)
                assert not any(_overlaps(box, panel) for panel in panels), plot.kind
    assert len(set(colours.values())) == len(FAMILIES)
