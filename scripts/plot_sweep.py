#!/usr/bin/env python3
"""Figures of a sweep: steps to a validation-accuracy threshold over the swept settings.

    python scripts/plot_sweep.py runs/sweeps/alpha_lamb_wd0.005            # threshold 0.95
    python scripts/plot_sweep.py runs/sweeps/tiny --threshold 0.1 --x lamb --y weight_decay

Writes into the sweep folder:
  heatmap_steps_to_<pct>.png  two swept settings as the axes (one panel per value of any others); each cell
      the median over seeds of the steps to the threshold (log colour scale) and how many seeds reached it
      within the budget ('2/3'); grey hatched: none did; blank: no member there.
  lines_steps_to_<pct>.png    steps to the threshold over one swept setting, a line per value of a second:
      the median over the seeds that reached it, their range shaded, and an x at the budget for each seed
      that never did. A sweep of variants crossed with a grid (e.g. three rows x eight operations) gets
      both figures with the variants' configurations as the second setting; a sweep whose members are no
      grid at all gets the lines over its configurations.
Only finished members count; the title says how many are not.
"""
import argparse
import math
import statistics
import sys
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repro.config import read_yaml  # noqa: E402
from repro.errors import UserError  # noqa: E402
from repro.metrics import first_step_reaching, read_jsonl  # noqa: E402
from repro.sweep_spec import SPEC_FILE  # noqa: E402
from repro.sweep_table import TABLE_FILE  # noqa: E402

LABELS = {"lamb": "λ (filter gain)", "alpha": "α (EMA decay)", "window_size": "MA window (steps)",
          "weight_decay": "weight decay", "lr": "learning rate", "beta1": "Adam β1", "beta2": "Adam β2",
          "momentum": "SGD momentum", "optimizer": "optimizer", "filter": "filter", "seed": "seed",
          "operation": "operation", "batch_size": "batch size", "init_scale": "initial weight scale"}
# a filter's own settings, which a member with another filter (or none) ignores: left out of its label
FILTER_SETTINGS = {"alpha": ("ema", "ema_highpass"), "lamb": ("ema", "ema_highpass", "ma"), "window_size": ("ma",)}
# settings worth naming in a title when the sweep holds them fixed, with when they matter
TITLE_KEYS = {"filter": lambda c: True, "alpha": lambda c: uses(c, "alpha"),
              "window_size": lambda c: uses(c, "window_size"), "lamb": lambda c: uses(c, "lamb"),
              "optimizer": lambda c: True, "lr": lambda c: True, "momentum": lambda c: c["optimizer"] == "SGD",
              "weight_decay": lambda c: True}
PLAIN = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 2,000 rather than 2x10^3


def label(key: str) -> str:
    return LABELS.get(key, key)


def show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def uses(row, key: str) -> bool:
    """Whether the member of this config or table row trains with `key` (a filter setting only under its
    filter)."""
    return key not in FILTER_SETTINGS or "filter" not in row or row["filter"] in FILTER_SETTINGS[key]


OPERATIONS = {"mul": "x·y", "add": "x+y", "sub": "x−y", "div": "x/y", "sq_sum": "x²+y²", "quad": "x²+xy+y²",
              "cube_xy": "x³+xy", "cube_xy2_y": "x³+xy²+y"}


def task_title(task: str, config: dict, swept: list[str]) -> str:
    if task == "modular":
        op = "operations" if "operation" in swept else OPERATIONS.get(config["operation"], config["operation"])
        return f"{op} mod {config['p']}"
    return {"mnist": "MNIST MLP", "imdb": "IMDb LSTM", "qm9": "QM9 GNN"}.get(task, task)


def tick(key: str, value) -> str:
    return OPERATIONS.get(value, value) if key == "operation" else show(value)


def load(sweep_dir: Path, threshold: float) -> tuple[dict, pd.DataFrame]:
    """The stored sweep and its table, with each finished member's steps to `threshold` (NaN: not reached)."""
    spec_path, table_path = sweep_dir / SPEC_FILE, sweep_dir / TABLE_FILE
    if not spec_path.exists() or not table_path.exists():
        raise UserError(f"{sweep_dir} is not a sweep folder (it lacks {SPEC_FILE} or {TABLE_FILE})")
    spec = read_yaml(spec_path)
    table = pd.read_csv(table_path)
    table = table[table["status"] == "finished"].copy()
    steps = []
    for run in table["run"]:
        hit = first_step_reaching(read_jsonl(sweep_dir / run / "metrics.jsonl"), "val_acc", threshold)
        steps.append(hit["step"] if hit else math.nan)
    table["reached_at"] = steps
    return spec, table


def cell(rows: pd.DataFrame) -> tuple[float, int, int]:
    """(median steps over the seeds, not-reached counting as beyond any step; reached; seeds)."""
    values = [v if not math.isnan(v) else math.inf for v in rows["reached_at"]]
    return (statistics.median(values) if values else math.nan), sum(math.isfinite(v) for v in values), len(values)


def numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)


def ordered(values) -> list:
    """Distinct values: numbers ascending, anything else (operations, configurations) in the sweep's order."""
    values = list(dict.fromkeys(values))
    return sorted(values) if numeric(values) else values


def heatmaps(spec: dict, table: pd.DataFrame, x: str, y: str, panels: list[str], threshold: float,
             title: str, path: Path) -> Path:
    xs, ys = ordered(table[x]), ordered(table[y])
    panel_values = list(product(*(ordered(table[k]) for k in panels))) or [()]
    finite = table["reached_at"].dropna()
    norm = LogNorm(vmin=max(finite.min(), 1), vmax=max(finite.max(), finite.min() + 1)) if len(finite) else None
    labels_in = 0.08 * max(len(tick(y, v)) for v in ys)  # room for the y labels (configurations are long)
    fig, axes = plt.subplots(1, len(panel_values), figsize=(1.3 * max(len(xs), 3) * len(panel_values) + 1.5 + labels_in,
                                                           0.9 * len(ys) + 2.2), squeeze=False, layout="constrained")
    image = None
    for ax, values in zip(axes[0], panel_values):
        rows = table
        for key, value in zip(panels, values):
            rows = rows[rows[key] == value]
        grid = np.full((len(ys), len(xs)), np.nan)
        for (i, yv), (j, xv) in product(enumerate(ys), enumerate(xs)):
            members = rows[(rows[x] == xv) & (rows[y] == yv)]
            if members.empty:
                continue
            median, reached, n = cell(members)
            budget = int(members["budget"].max())
            colour = "black"
            if math.isfinite(median):
                grid[i, j] = median
                text = f"{median:,.0f}\n{reached}/{n}"
                colour = "white" if norm(median) > 0.6 else "black"  # viridis_r is dark at the top
            else:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="//",
                                           edgecolor="0.6", lw=0))
                text = f"> {budget:,}\n{reached}/{n}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        image = ax.imshow(np.ma.masked_invalid(grid), norm=norm, cmap="viridis_r", origin="lower", aspect="auto")
        ax.set_xticks(range(len(xs)), [tick(x, v) for v in xs])
        ax.set_yticks(range(len(ys)), [tick(y, v) for v in ys])
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
        if panels:
            ax.set_title(", ".join(f"{label(k)} {show(v)}" for k, v in zip(panels, values)), fontsize=9)
    if image is not None and norm is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), label=f"steps to {threshold:.0%} val. accuracy (median)")
        bar.ax.yaxis.set_major_formatter(PLAIN)
        bar.ax.yaxis.set_minor_formatter(PLAIN)
    fig.suptitle(title + "\ncell: median over seeds (a seed that never reached it counts as beyond the budget), "
                 "seeds that reached it; hatched: the median did not", fontsize=10)
    return save(fig, path)


def lines(table: pd.DataFrame, x: str, hue: str | None, panels: list[str], threshold: float, title: str,
          path: Path) -> Path:
    xs = ordered(table[x])
    panel_values = list(product(*(ordered(table[k]) for k in panels))) or [()]
    fig, axes = plt.subplots(1, len(panel_values), figsize=(max(6.5, 0.9 * len(xs) + 3) * len(panel_values), 4.6),
                             squeeze=False, sharey=True, layout="constrained")
    budget = int(table["budget"].max())
    categorical = not numeric(xs)  # no line between unrelated x values: points, ranges as error bars
    for ax, values in zip(axes[0], panel_values):
        rows = table
        for key, value in zip(panels, values):
            rows = rows[rows[key] == value]
        hues = ordered(rows[hue]) if hue else [None]
        for c, hue_value in enumerate(hues):
            series = rows if hue is None else rows[rows[hue] == hue_value]
            medians, lows, highs, never = [], [], [], []
            for j, xv in enumerate(xs):
                reached = series[series[x] == xv]["reached_at"]
                hits = reached.dropna()
                medians.append(hits.median() if len(hits) else np.nan)
                lows.append(hits.min() if len(hits) else np.nan)
                highs.append(hits.max() if len(hits) else np.nan)
                never += [j] * int(reached.isna().sum())
            name = (hue_value if hue == "configuration" else f"{label(hue)} {tick(hue, hue_value)}") if hue else None
            shift = min(0.1, 0.8 / len(hues)) * (c - (len(hues) - 1) / 2)  # side by side, several seeds visible
            if categorical:
                at = np.arange(len(xs)) + shift
                spread = [np.subtract(medians, lows), np.subtract(highs, medians)]
                ax.errorbar(at, medians, yerr=spread, fmt="o", color=f"C{c}", capsize=3, label=name)
            else:
                ax.plot(range(len(xs)), medians, "o-", color=f"C{c}", label=name)
                ax.fill_between(range(len(xs)), lows, highs, color=f"C{c}", alpha=0.2)
            if never:
                ax.plot([j + shift for j in never], [budget] * len(never), "x", color=f"C{c}", ms=7)
        ax.axhline(budget, color="0.5", ls="--", lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(PLAIN)
        ticks = [tick(x, v) for v in xs]
        wide = max(len(t) for t in ticks) > 8
        ax.set_xticks(range(len(xs)), ticks, rotation=30 if wide else 0, ha="right" if wide else "center")
        ax.set_xlabel(label(x))
        ax.grid(True, which="both", alpha=0.3)
        if panels:
            ax.set_title(", ".join(f"{label(k)} {show(v)}" for k, v in zip(panels, values)), fontsize=9)
        handles = ax.get_legend_handles_labels()[0] if hue else []
        handles.append(Line2D([], [], color="0.3", marker="x", ls="--", lw=1,
                              label=f"budget ({budget:,} steps); x: a seed that never reached it"))
        ax.legend(handles=handles, fontsize=7)
    axes[0][0].set_ylabel(f"steps to {threshold:.0%} val. accuracy")
    shown = "point: median of the seeds that reached it; bar" if categorical else \
        "line: median of the seeds that reached it; shaded"
    fig.suptitle(title + f"\n{shown}: their range", fontsize=10)
    return save(fig, path)


def configuration(row, keys: list[str]) -> str:
    """A member's label by its settings among `keys` (those its filter ignores left out)."""
    return ", ".join(f"{k}={show(row[k])}" for k in keys if pd.notna(row[k]) and uses(row, k))


def crosses(configs: list[dict], key: str, rest: list[str]) -> bool:
    """Whether every value of `key` meets every configuration of the `rest` settings (a grid of variants)."""
    pairs = {(repr(c[key]), configuration(c, rest)) for c in configs}
    return len({p[0] for p in pairs}) > 1 and len(pairs) == len({p[0] for p in pairs}) * len({p[1] for p in pairs})


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_sweep(sweep_dir: Path, threshold: float = 0.95, x: str | None = None, y: str | None = None) -> list[Path]:
    spec, table = load(sweep_dir, threshold)
    if table.empty:
        raise UserError(f"{sweep_dir}: no finished member to plot yet")
    members = spec["members"]
    configs = [m["config"] for m in members]
    axes = [k for k in spec["swept"] if len({repr(c[k]) for c in configs}) > 1]
    for key in (x, y):
        if key is not None and key not in axes:
            raise UserError(f"{key!r} is not a swept setting of this sweep (swept: {', '.join(axes) or 'none'})")
    fixed = [f"{label(k)} {show(configs[0][k])}" for k, matters in TITLE_KEYS.items()
             if k not in axes and len({repr(c[k]) for c in configs}) == 1 and matters(configs[0])]
    seeds = len(spec["seeds"])
    unfinished = len(members) - len(table)
    pct = round(threshold * 100)
    title = (f"{task_title(spec['task'], configs[0], axes)}: steps to {threshold:.0%} validation accuracy, "
             f"{seeds} seed{'s' if seeds > 1 else ''} per setting"
             + (f" ({unfinished} members not finished, left out)" if unfinished else "")
             + (f"\nfixed: {', '.join(fixed)}" if fixed else ""))
    combos = {tuple(repr(c[k]) for k in axes) for c in configs}
    is_grid = len(combos) == math.prod(len({repr(c[k]) for c in configs}) for k in axes)
    if not axes:
        raise UserError(f"{sweep_dir}: nothing is swept but the seed")
    paths = []
    if not is_grid:  # variants: one axis of configurations, crossed with a grid setting where there is one
        x = x or next((k for k in axes if crosses(configs, k, [a for a in axes if a != k])), None)
        rest = [k for k in axes if k != x]
        if x is None or not crosses(configs, x, rest):
            table["configuration"] = [configuration(row, axes) for _, row in table.iterrows()]
            return [lines(table, "configuration", None, [], threshold, title, sweep_dir / f"lines_steps_to_{pct}.png")]
        table["configuration"] = [configuration(row, rest) for _, row in table.iterrows()]
        return [heatmaps(spec, table, x, "configuration", [], threshold, title,
                         sweep_dir / f"heatmap_steps_to_{pct}.png"),
                lines(table, x, "configuration", [], threshold, title, sweep_dir / f"lines_steps_to_{pct}.png")]
    x = x or axes[0]
    rest = [k for k in axes if k != x]
    y = y or (rest[0] if rest else None)
    panels = [k for k in rest if k != y]
    if y is not None:
        paths.append(heatmaps(spec, table, x, y, panels, threshold, title, sweep_dir / f"heatmap_steps_to_{pct}.png"))
    paths.append(lines(table, x, y, panels, threshold, title, sweep_dir / f"lines_steps_to_{pct}.png"))
    return paths


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, as the entry points
        raise UserError(f"bad command line: {message}")


def main(argv=None) -> int:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--threshold", type=float, default=0.95, help="validation accuracy, a fraction")
    parser.add_argument("--x", default=None, help="swept setting along x (default: the first swept)")
    parser.add_argument("--y", default=None, help="swept setting along y / the lines (default: the next)")
    try:
        args = parser.parse_args(argv)
        if not 0 < args.threshold <= 1:
            raise UserError("--threshold must be in (0, 1]")
        for path in plot_sweep(args.sweep_dir, args.threshold, args.x, args.y):
            print(path)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
