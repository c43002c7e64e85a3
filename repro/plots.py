"""Figures from saved metrics (never from inside the training loop)."""
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro.metrics import read_jsonl  # noqa: E402

# (key stem, y label) pairs a task may log; a panel is drawn for each stem present
PANELS = (("acc", "accuracy"), ("loss", "loss"))


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _run_label(run_dir: Path) -> str:
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text()).get("run", run_dir.name)
    return run_dir.name


def plot_groups(groups: dict[str, list[Path]], path: Path, title: str = "", stems=("acc", "loss")) -> Path:
    """Accuracy and loss vs optimisation step (log x), as the paper's figures: one colour per group
    (e.g. baseline / Grokfast / control), one thin line per run (seed); val solid, train dashed."""
    data = {name: [read_jsonl(Path(d) / "metrics.jsonl") for d in dirs] for name, dirs in groups.items()}
    panels = [(stem, ylabel) for stem, ylabel in PANELS if stem in stems and any(
        f"val_{stem}" in r or f"train_{stem}" in r for runs in data.values() for recs in runs for r in recs)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4.2), squeeze=False)
    for ax, (stem, ylabel) in zip(axes[0], panels):
        for i, (name, runs) in enumerate(data.items()):
            for j, records in enumerate(runs):
                for split, style in (("train", "--"), ("val", "-")):
                    points = [(r["step"], r[f"{split}_{stem}"]) for r in records
                              if r.get(f"{split}_{stem}") is not None and r["step"] > 0]
                    if points:
                        xs, ys = zip(*points)
                        label = f"{name} ({split})".strip() if j == 0 else None
                        ax.plot(xs, ys, style, color=f"C{i}", lw=1.2, alpha=0.85, label=label)
        ax.set_xscale("log")
        if stem == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("optimization step")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path


def plot_runs(run_dirs: list[Path], path: Path, labels: list[str] | None = None, title: str = "") -> Path:
    """Overlay several runs, one colour each (baseline vs Grokfast)."""
    labels = labels or [_run_label(Path(d)) for d in run_dirs]
    return plot_groups({label: [d] for label, d in zip(labels, run_dirs)}, path, title)


def plot_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return plot_groups({"": [run_dir]}, run_dir / "curves.png", title=_run_label(run_dir))
