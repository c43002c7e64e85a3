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


def _label(run_dir: Path) -> str:
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text()).get("run", run_dir.name)
    return run_dir.name


def plot_runs(run_dirs: list[Path], path: Path, labels: list[str] | None = None, title: str = "") -> Path:
    """Accuracy and loss vs optimisation step (log x): train dashed, val solid, one colour per run."""
    runs = [(Path(d), read_jsonl(Path(d) / "metrics.jsonl")) for d in run_dirs]
    labels = labels or [_label(d) for d, _ in runs]
    panels = [(stem, ylabel) for stem, ylabel in PANELS
              if any(f"val_{stem}" in r or f"train_{stem}" in r for _, recs in runs for r in recs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (stem, ylabel) in zip(axes[0], panels):
        for i, ((_, records), label) in enumerate(zip(runs, labels)):
            color = f"C{i}"
            for split, style in (("train", "--"), ("val", "-")):
                points = [(r["step"], r[f"{split}_{stem}"]) for r in records
                          if r.get(f"{split}_{stem}") is not None and r["step"] > 0]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, color=color, lw=1.4, label=f"{label} ({split})".strip())
        ax.set_xscale("log")
        if stem == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("optimization step")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path


def plot_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return plot_runs([run_dir], run_dir / "curves.png", labels=[""], title=_label(run_dir))
