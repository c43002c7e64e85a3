"""Figures from saved metrics (never from inside the training loop).

plot_run: one run's curves.png (training and validation, accuracy and loss). plot_groups: a table's
figure, one colour per row: the median over its seeds with a min-max band, the seeds as faint lines.
"""
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from repro.metrics import read_jsonl  # noqa: E402

SPLITS = (("val", "validation"), ("train", "training"))
# what each task's loss is, for the y axes (MNIST's depends on its loss_function)
LOSS_NAMES = {"modular": "cross-entropy", "imdb": "binary cross-entropy", "qm9": "MSE (bohr⁶)"}
ROW_STYLES = ("-", "--", ":", "-.")  # a row drawn over another still shows through


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run_label(run_dir: Path) -> str:
    return _read_json(run_dir / "summary.json").get("run", run_dir.name)


def loss_name(run_dir: Path) -> str:
    """The run's loss as an axis label: 'cross-entropy', 'MSE (bohr⁶)', ... ('loss' when unknown)."""
    task = _read_json(run_dir / "summary.json").get("task", "")
    if task == "mnist":
        import yaml

        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        return "MSE (one-hot targets)" if config.get("loss_function", "MSE") == "MSE" else "cross-entropy"
    return LOSS_NAMES.get(task, "loss")


def _compact(x: float, _pos=None) -> str:
    """Tick labels: 1, 10, 100, 1k, 10k, 100k, 1M; 0.1, 0.01 below one."""
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _log_axis(axis, lo: float, hi: float) -> None:
    """Labels at 1, 10, 100... (and at 2 and 5 times them when the data spans under two decades), none on
    the minor ticks: matplotlib's defaults label minor ticks of a short log axis until they overlap."""
    short = hi > 0 and lo > 0 and hi / lo < 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if short else (1.0,)))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_formatter(NullFormatter())


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that hold `key` (step 0, if logged, has no place on a log axis)."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None and r["step"] > 0]
    if not points:
        return np.empty(0), np.empty(0)
    steps, values = zip(*points)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _median_band(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Median, min and max over the curves on the steps every curve covers (interpolated onto the union
    of their steps there; runs on one evaluation grid are used as logged). None when they share none."""
    start = max(steps[0] for steps, _ in curves)
    end = min(steps[-1] for steps, _ in curves)
    if start > end:
        return None
    grid = np.unique(np.concatenate([steps[(steps >= start) & (steps <= end)] for steps, _ in curves]))
    stacked = np.stack([np.interp(grid, steps, values) for steps, values in curves])
    return grid, np.median(stacked, axis=0), stacked.min(axis=0), stacked.max(axis=0)


def _finish_axes(ax, ys: list[np.ndarray], xs: list[np.ndarray], log_y: bool) -> None:
    ax.set_xscale("log")
    if xs:
        all_x = np.concatenate(xs)
        _log_axis(ax.xaxis, all_x.min(), all_x.max())
    positive = np.concatenate(ys) if ys and log_y else np.empty(0)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if positive.size:  # a log axis needs a finite positive value (a diverged run's losses may have none)
        ax.set_yscale("log")
        _log_axis(ax.yaxis, positive.min(), positive.max())
    ax.set_xlabel("optimisation step")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _panels(records: list[list[dict]]) -> list[str]:
    """The metric stems ('acc', 'loss') any run logged."""
    return [stem for stem in ("acc", "loss")
            if any(f"{split}_{stem}" in r for runs in records for r in runs for split, _ in SPLITS)]


def _ylabel(split: str, stem: str, loss: str) -> str:
    return f"{split} {'accuracy' if stem == 'acc' else loss}"


def plot_groups(groups: dict[str, list[Path]], path: Path, title: str = "", stems=("acc", "loss")) -> Path:
    """A table's figure: one column per metric (accuracy, loss), one row of panels per split (validation
    above, training below), one colour and line style per group (a table row); each group's median over
    its runs (seeds) with a min-max band, and each run as a faint line over its whole length (runs that
    stop early leave the median where the shortest ends)."""
    data = {name: [read_jsonl(Path(d) / "metrics.jsonl") for d in dirs] for name, dirs in groups.items()}
    stems = [s for s in _panels([runs for group in data.values() for runs in group]) if s in stems] or ["loss"]
    first = next((Path(d) for dirs in groups.values() for d in dirs), None)
    loss = loss_name(first) if first else "loss"
    if len(stems) == 1:  # one metric: validation and training side by side
        fig, grid = plt.subplots(1, len(SPLITS), figsize=(5.6 * len(SPLITS), 4.2), squeeze=False)
        axes = {(split, stems[0]): grid[0][i] for i, (split, _) in enumerate(SPLITS)}
    else:  # a column per metric, validation above training
        fig, grid = plt.subplots(len(SPLITS), len(stems), figsize=(5.6 * len(stems), 7.6), squeeze=False)
        axes = {(split, stem): grid[i][j] for i, (split, _) in enumerate(SPLITS) for j, stem in enumerate(stems)}
    first_ax = next(iter(axes.values()))
    for stem in stems:
        for split, split_name in SPLITS:
            ax, key, xs, ys = axes[(split, stem)], f"{split}_{stem}", [], []
            for i, (name, runs) in enumerate(data.items()):
                curves = [c for c in (_series(records, key) for records in runs) if c[0].size]
                color, style = f"C{i}", ROW_STYLES[i % len(ROW_STYLES)]
                for steps, values in curves:
                    ax.plot(steps, values, "-", color=color, lw=0.6, alpha=0.3)
                    xs.append(steps)
                    ys.append(values)
                band = _median_band(curves) if curves else None
                if band is not None:
                    grid, median, low, high = band
                    ax.fill_between(grid, low, high, color=color, alpha=0.15, lw=0)
                    ax.plot(grid, median, style, color=color, lw=1.8,
                            label=f"{name} (n={len(curves)})" if ax is first_ax else None)
            _finish_axes(ax, ys, xs, log_y=stem == "loss")
            ax.set_ylabel(_ylabel(split_name, stem, loss))
    handles, labels = first_ax.get_legend_handles_labels()
    if handles:  # below the panels, never over the data
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 3),
                   fontsize=9, frameon=False,
                   title="median over seeds (thick), min-max band, each seed (faint)", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path


def plot_runs(run_dirs: list[Path], path: Path, labels: list[str] | None = None, title: str = "") -> Path:
    """Overlay several runs, one colour each (baseline vs Grokfast)."""
    labels = labels or [_run_label(Path(d)) for d in run_dirs]
    return plot_groups({label: [d] for label, d in zip(labels, run_dirs)}, path, title)


def plot_run(run_dir: Path) -> Path:
    """One run's curves.png: a panel per metric (accuracy, loss), training and validation in each; IMDb's
    per-step validation batch (the paper's protocol) as a faint third series."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    stems = _panels([records]) or ["loss"]
    loss = loss_name(run_dir)
    fig, axes = plt.subplots(1, len(stems), figsize=(5.6 * len(stems), 4.2), squeeze=False)
    series = (("val_batch", "validation, one batch per step (the paper's)", "C2", "-", 0.5, 0.35),
              ("train", "training", "C0", "--", 1.4, 1.0), ("val", "validation", "C1", "-", 1.4, 1.0))
    for ax, stem in zip(axes[0], stems):
        xs, ys = [], []
        for prefix, name, color, style, width, alpha in series:
            steps, values = _series(records, f"{prefix}_{stem}")
            if steps.size:
                ax.plot(steps, values, style, color=color, lw=width, alpha=alpha, label=name)
                xs.append(steps)
                ys.append(values)
        _finish_axes(ax, ys, xs, log_y=stem == "loss")
        ax.set_ylabel("accuracy" if stem == "acc" else loss)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=9,
                   frameon=False)
    fig.suptitle(_run_label(run_dir), fontsize=10)
    fig.tight_layout()
    path = run_dir / "curves.png"
    _save(fig, path)
    return path
