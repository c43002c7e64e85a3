"""Run records: the header (commit, versions, device), metrics.jsonl, summary.json, and their arithmetic."""
import importlib.metadata
import gzip
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from repro.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.85, 0.90, 0.95)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def git_commit() -> str:
    """$GROKFAST_GIT_COMMIT when set: whoever copied the tree to another machine knows its commit, and a
    copy may carry a stale .git of its own (one sent to a GPU machine here did). Else the commit of this
    checkout, with '-dirty' if tracked files differ; else 'unknown'."""
    if os.environ.get("GROKFAST_GIT_COMMIT"):
        return os.environ["GROKFAST_GIT_COMMIT"]

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_header(device: torch.device, argv: list[str] | None = None) -> dict:
    """Everything needed to say where a number came from."""
    import numpy

    header = {
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
        "device": device_name(device),
        "hostname_kind": platform.system(),
    }
    # how a shared GPU was split (scripts/run_on_gpu.sh sets these per run): under an SM limit cuDNN can
    # pick other kernels, and so round differently
    mps = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CUDA_MPS_")}
    if mps:
        header["cuda_mps"] = mps
    for package in ("torch_geometric", "torchvision", "rdkit"):  # versions without importing them
        try:
            header[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return header


def first_step_reaching(records: list[dict], key: str, threshold: float) -> dict | None:
    """The first record whose `key` is >= threshold, or None: the paper's 'iterations to 95%'."""
    for record in records:
        value = record.get(key)
        if value is not None and value >= threshold:
            return record
    return None


def _best(records: list[dict], key: str, pick) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None and math.isfinite(r[key])]
    return pick(values) if values else None


def _last(records: list[dict], key: str) -> float | None:
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def summarize(records: list[dict], steps: int, wall_s: float, train_step_ms: float | None,
              peak_gpu_mem_mb: float | None, device: str, stopped: str) -> dict:
    """The common summary fields; tasks add their own table metrics beside these."""
    summary = {"steps": steps, "stopped": stopped, "device": device}
    for threshold in THRESHOLDS:
        hit = first_step_reaching(records, "val_acc", threshold)
        tag = f"{round(threshold * 100)}"
        summary[f"steps_to_{tag}"] = hit["step"] if hit else None
        summary[f"time_to_{tag}_s"] = hit["elapsed_s"] if hit else None
    summary.update(
        best_val_acc=_best(records, "val_acc", max),
        min_val_loss=_best(records, "val_loss", min),
        final_val_acc=_last(records, "val_acc"),
        final_train_acc=_last(records, "train_acc"),
        wall_s=wall_s,
        train_step_ms=train_step_ms,
        wall_per_step_ms=1000.0 * wall_s / steps if steps else None,
        peak_gpu_mem_mb=peak_gpu_mem_mb,
    )
    return summary


def early_stop(records: list[dict], acc: float, patience: int, streak: int = 0) -> tuple[int, str | None]:
    """Early stopping once val_acc has held >= acc for `patience` evaluations in a row (0: never):
    -> (the streak after `records`, given the streak before them; why to stop, or None)."""
    if not patience or not acc:
        return streak, None
    for record in records:
        if "val_acc" not in record:  # a task's per-step record without the full evaluation
            continue
        streak = streak + 1 if record["val_acc"] >= acc else 0
        if streak >= patience:
            return streak, f"early_stop: val_acc >= {acc:g} for {streak} evaluations at step {record['step']}"
    return streak, None


def stored_jsonl(path: Path) -> Path | None:
    """Where the log `path` is stored: itself, or gzipped beside it (`metrics.jsonl.gz`, as results/
    keeps the long ones of finished runs); None when neither exists."""
    path = Path(path)
    return next((p for p in (path, path.with_name(path.name + ".gz")) if p.exists()), None)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics log (or its gzipped copy). A torn last line (a crash mid-write) is
    dropped; a bad line before it is corruption, reported in one line naming it."""
    stored = stored_jsonl(path)
    if stored is None:
        return []
    try:
        data = stored.read_bytes()
        if stored.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {stored}: {exc}") from None
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line.decode())
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            if number == len(lines):  # torn by a crash mid-write: that evaluation is simply lost
                break
            raise UserError(f"{stored} line {number} is not a JSON record: the log is corrupted "
                            f"(nothing was changed)") from None
        records.append(record)
    return records


class MetricsLog:
    """Append-only metrics.jsonl: one JSON object per evaluation, flushed line by line.

    write=False keeps the records in memory only (the non-zero ranks of a data-parallel run)."""

    def __init__(self, path: Path, write: bool = True):
        self.path, self.write = path, write
        self.records: list[dict] = read_jsonl(path)

    def append(self, records: list[dict]) -> None:
        if not self.write:
            self.records.extend(records)
            return
        try:
            with self.path.open("a") as f:
                for record in records:
                    f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.records.extend(records)

    def truncate_to(self, count: int) -> None:
        """Keep the first `count` records (a resume drops what came after its checkpoint)."""
        self.records = self.records[:count]
        if self.write:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
