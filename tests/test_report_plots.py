"""The benchmark plots read on their own: titles, labelled axes with units, labelled targets, readable names, the
spread between repeats, a legend off the data, and a size that reads in the docs (issue 16, item 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks._report import figures, plot  # selects matplotlib's Agg backend
from matplotlib.axes import Axes
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "results.json"
INTERNAL_NAMES = ("ours_", "round_robin", "_headroom", "memory", "redis")
UNITS = ("(", "/ s", "ms", "ratio")


@pytest.fixture(name="report", scope="module")
def _report() -> dict[str, Any]:
    """The committed results of the last full run."""
    report: dict[str, Any] = json.loads(RESULTS.read_text())
    return report


@pytest.fixture(name="figs", scope="module")
def _figs(report: dict[str, Any]) -> dict[str, Figure]:
    return figures(report)


def legend_texts(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends if legend is not None for t in legend.get_texts()]


def test_one_figure_per_plotted_scenario(figs: dict[str, Figure]) -> None:
    """Overhead, cascade and ledger each get a figure."""
    assert set(figs) == {"overhead", "cascade", "ledger"}


@pytest.mark.parametrize("name", ["overhead", "cascade", "ledger"])
class TestEachFigure:
    def test_titled(self, figs: dict[str, Figure], name: str) -> None:
        """The figure has a title saying what was measured, and every panel has one too."""
        fig = figs[name]
        assert fig.get_suptitle()
        assert all(ax.get_title() for ax in fig.axes)

    def test_axes_labelled_with_units(self, figs: dict[str, Figure], name: str) -> None:
        """Both axes of every panel are labelled, the y axis with its unit."""
        for ax in figs[name].axes:
            assert ax.get_xlabel()
            assert ax.get_ylabel()
            assert any(unit in ax.get_ylabel() for unit in UNITS), ax.get_ylabel()

    def test_readable_names(self, figs: dict[str, Figure], name: str) -> None:
        """Legends and tick labels use the names a reader knows (CapacityAwareGroupChat, RedisLedger), not the
        benchmark's internal ones (ours_exact, memory)."""
        fig = figs[name]
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        texts = legend_texts(fig) + ticks
        assert legend_texts(fig)
        assert not [t for t in texts if any(internal in t for internal in INTERNAL_NAMES)], texts

    def test_targets_are_labelled(self, figs: dict[str, Figure], name: str) -> None:
        """Every target line is in the legend, saying what it is."""
        assert any(t.lower().startswith("target") for t in legend_texts(figs[name]))

    def test_legend_is_off_the_data(self, figs: dict[str, Figure], name: str) -> None:
        """The legend belongs to the figure, outside every panel, so it hides no point."""
        fig = figs[name]
        assert fig.legends
        assert all(ax.get_legend() is None for ax in fig.axes)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        legend_box = fig.legends[0].get_window_extent(renderer)
        assert not any(legend_box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)

    def test_size_reads_in_docs(self, figs: dict[str, Figure], name: str, tmp_path: Path) -> None:
        """Saved at least 1000 px wide."""
        fig = figs[name]
        width_px = fig.get_figwidth() * fig.get_dpi()
        assert width_px >= 1000


def errorbars(ax: Axes) -> int:
    return sum(1 for c in ax.containers if type(c).__name__ == "ErrorbarContainer")


def test_spread_between_repeats_is_shown(figs: dict[str, Figure]) -> None:
    """Where the results keep the repeats (overhead's min/max ratio, cascade's goodput per repeat), the plot shows
    their spread as error bars."""
    assert errorbars(figs["overhead"].axes[0]) >= 3
    assert errorbars(figs["cascade"].axes[0]) >= 3


def test_plot_writes_the_pngs(report: dict[str, Any], tmp_path: Path) -> None:
    """plot() writes one PNG per figure."""
    paths = plot(report, tmp_path)
    assert sorted(p.name for p in paths) == ["cascade.png", "ledger.png", "overhead.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_pngs_regenerate_from_results_json(tmp_path: Path) -> None:
    """``python -m benchmarks._report results.json --out DIR`` redraws the plots without rerunning anything."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._report", str(RESULTS), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["cascade.png", "ledger.png", "overhead.png"]
