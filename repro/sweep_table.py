"""The sweep's table: one row per member (its swept values, seed, run folder, status and summary metrics)."""
import json
from pathlib import Path

import pandas as pd

from repro.sweep_spec import Member, Sweep

TABLE_FILE = "sweep.csv"
# summary fields first in this order; any others (task-specific) follow
METRICS = ("steps", "stopped", "steps_to_85", "steps_to_90", "steps_to_95", "time_to_95_s", "best_val_acc",
           "min_val_loss", "final_val_acc", "final_train_acc", "wall_s", "train_step_ms", "wall_per_step_ms",
           "peak_gpu_mem_mb", "device")
SUMMARY_ECHOES = ("task", "run", "seed", "filter")  # already in the row


def member_status(folder: Path) -> tuple[str, dict]:
    """(status, summary): finished | interrupted | started (a checkpoint or log, no summary) | pending."""
    summary_path = folder / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return ("interrupted" if summary["stopped"].startswith("interrupted") else "finished"), summary
    if (folder / "checkpoint.pt").exists() or (folder / "metrics.jsonl").exists():
        return "started", {}
    return "pending", {}


def is_finished(folder: Path) -> bool:
    return member_status(folder)[0] == "finished"


def member_row(sweep: Sweep, member: Member, sweep_dir: Path) -> dict:
    status, summary = member_status(sweep_dir / member.name)
    row = {"run": member.name, "seed": member.seed}
    row.update({k: getattr(member.cfg, k) for k in sweep.swept})
    row.update({"status": status, "budget": member.cfg.steps, "run_dir": member.name})
    row.update({k: summary.get(k) for k in METRICS})
    row.update({k: v for k, v in summary.items() if k not in row and k not in SUMMARY_ECHOES})
    return row


def sweep_table(sweep: Sweep, sweep_dir: Path) -> pd.DataFrame:
    """Every member, run or not: none is dropped (a member that never ran has status 'pending')."""
    return pd.DataFrame([member_row(sweep, m, sweep_dir) for m in sweep.members])


def write_table(sweep: Sweep, sweep_dir: Path) -> tuple[Path, pd.DataFrame]:
    table = sweep_table(sweep, sweep_dir)
    path = sweep_dir / TABLE_FILE
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return path, table
