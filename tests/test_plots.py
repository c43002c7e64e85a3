"""repro/plots.py: axes named with the metric, legends that name the series and stay off the data, readable
log ticks, a table's rows as median + band."""
from pathlib import Path

import numpy as np
import pytest

from repro import plots
from repro.cli import run
from repro.tasks.modular import ModularConfig, ModularTask

SMALL = ["--p", "11", "--batch_size", "16", "--device", "cpu", "--progress", "false", "--eval_every", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed, steps in ((0, 30), (1, 24)):  # seed 1 stops earlier: the median ends where it does
        assert run(ModularConfig, ModularTask, "", ["--seed", str(seed), "--budget", str(steps),
                                                    "--results_dir", str(root), *SMALL]) == 0
    return sorted(root.glob("modular/*"))


@pytest.fixture
def figures(monkeypatch):
    """The figures plots.py would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig))
    return kept


def _legend_clear_of_axes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    return all(not legend.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)


def test_run_curves_name_their_series_and_metric(runs, figures):
    plots.plot_run(runs[0])
    fig = figures[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["training", "validation"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "cross-entropy"]
    assert _legend_clear_of_axes(fig)
    for ax in fig.axes:  # no label on the minor ticks, where a short log axis crowds them
        assert all(not label.get_text() for label in ax.xaxis.get_minorticklabels())


def test_table_figure_median_and_band_per_row(runs, figures):
    plots.plot_groups({"Baseline": runs, "Other": runs[:1]}, Path("unused.png"), title="t")
    fig = figures[0]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["validation accuracy", "validation cross-entropy", "training accuracy",
                      "training cross-entropy"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Baseline (n=2)", "Other (n=1)"]
    assert _legend_clear_of_axes(fig)
    ax = fig.axes[0]
    thick = [line for line in ax.get_lines() if line.get_linewidth() > 1.5]
    assert len(thick) == 2 and thick[0].get_linestyle() != thick[1].get_linestyle()  # one row never hides another
    assert max(thick[0].get_xdata()) == 24  # the median ends where the shorter seed ends
    assert len(ax.collections) == 2  # a min-max band per row


def test_median_band_over_the_steps_all_runs_cover():
    a = (np.array([1.0, 2, 3, 4]), np.array([0.0, 1, 2, 3]))
    b = (np.array([1.0, 2, 3]), np.array([2.0, 3, 4]))
    c = (np.array([1.0, 2, 3]), np.array([4.0, 5, 6]))
    grid, median, low, high = plots._median_band([a, b, c])
    assert grid.tolist() == [1, 2, 3] and median.tolist() == [2, 3, 4]
    assert low.tolist() == [0, 1, 2] and high.tolist() == [4, 5, 6]


def test_compact_tick_labels():
    assert [plots._compact(x) for x in (1, 10, 100, 1000, 20_000, 300_000, 1e6, 0.01)] == \
        ["1", "10", "100", "1k", "20k", "300k", "1M", "0.01"]


def test_loss_names_follow_the_task(tmp_path):
    for task, name in (("qm9", "MSE (bohr⁶)"), ("imdb", "binary cross-entropy"), ("other", "loss")):
        (tmp_path / "summary.json").write_text(f'{{"task": "{task}"}}')
        assert plots.loss_name(tmp_path) == name
    (tmp_path / "summary.json").write_text('{"task": "mnist"}')
    (tmp_path / "config.yaml").write_text("loss_function: CrossEntropy\n")
    assert plots.loss_name(tmp_path) == "cross-entropy"
