"""A run's folder and its life: where it lies, whether it starts afresh or resumes, the lock that keeps
a second process out, and every file in it (config.yaml, header.json, metrics.jsonl, checkpoint.pt,
summary.json, curves.png).

How a folder is opened:
- nothing there (or only what a run killed before its first checkpoint left): a fresh start;
- a checkpoint: `--resume` (or `--skip_finished`) continues it; a plain command refuses;
- a finished summary: `--skip_finished` exits 0, `--resume` continues when the budget grew.
Every write reports a failure in one line; nothing is read that has not been checked first.
"""
import dataclasses
import fcntl
import json
import os
from pathlib import Path

import torch

from repro import checkpoint as ckpt
from repro.config import Config, run_name, save_config
from repro.errors import RunAlreadyFinished, UserError
from repro.metrics import MetricsLog, atomic_write_text, run_header

RUN_FILES = ("metrics.jsonl", "config.yaml", "header.json", "curves.png")


def out_dir_for(cfg: Config, name_part: str) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.results_dir) / cfg.task / run_name(cfg, name_part)


def read_json_object(path: Path) -> dict | None:
    """A JSON object file, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_summary(path: Path) -> dict | None:
    """summary.json, or None when absent or unreadable (a run killed while writing it is unfinished)."""
    summary = read_json_object(path)
    return summary if summary is not None and isinstance(summary.get("stopped"), str) else None


class RunFolder:
    """Opened by `open()`; rank 0 writes, other ranks of a data-parallel run only read."""

    def __init__(self, path: Path, is_main: bool = True):
        self.path, self.is_main = Path(path), is_main
        self.checkpoint_path = self.path / ckpt.FILENAME
        self.summary_path = self.path / "summary.json"
        self._lock_fd: int | None = None
        self.log: MetricsLog | None = None

    # ---- opening --------------------------------------------------------------------------------
    def open(self, cfg: Config, device: torch.device, barrier=None) -> tuple[Config, dict | None]:
        """Lock the folder and decide how the run starts: -> (config, the checkpoint to resume from or
        None). Raises RunAlreadyFinished (nothing to do) or UserError, having changed nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run folder {self.path} exists and is not a directory")
        if not self.path.exists() and cfg.resume and not cfg.skip_finished:
            raise UserError(f"--resume: no run in {self.path} to resume")
        if self.is_main:
            self._lock(create=not self.path.exists())
        try:
            return self._open(cfg, device, barrier)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (the process's end does too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self, cfg: Config, device: torch.device, barrier) -> tuple[Config, dict | None]:
        summary = read_summary(self.summary_path)
        finished = summary is not None and not summary["stopped"].startswith("interrupted")
        has_checkpoint = self.checkpoint_path.exists()
        if finished and cfg.skip_finished:
            raise RunAlreadyFinished(f"skipped: {self.path} already holds a finished run")
        if has_checkpoint and (cfg.resume or cfg.skip_finished):
            state = ckpt.load(self.checkpoint_path, device)
            ckpt.check_compatible(state["config"], cfg)
            if finished and state["step"] >= cfg.steps:
                raise RunAlreadyFinished(f"nothing to do: {self.path} already trained {state['step']} steps, "
                                         f"at least the {cfg.steps} asked for")
            self.log = MetricsLog(self.path / "metrics.jsonl", write=self.is_main)  # checked before any write
            if barrier:
                barrier()  # every rank has read the checkpoint and the log before rank 0 rewrites them
            self.log.truncate_to(state["num_records"])
            return dataclasses.replace(cfg, resume=True), state
        if finished or has_checkpoint:
            raise UserError(f"{self.path} already holds a run: pass --resume to continue it "
                            f"(or --skip_finished), or choose another --out_dir / --label")
        if cfg.resume and not any((self.path / name).exists() for name in RUN_FILES):
            raise UserError(f"--resume: no run in {self.path} to resume")
        self._discard_unfinished()
        if barrier:
            barrier()
        self.log = MetricsLog(self.path / "metrics.jsonl", write=self.is_main)
        return cfg, None

    def _lock(self, create: bool) -> None:
        """An OS lock on the folder itself, held for the process's life: the kernel drops it when the
        process dies, so a killed run never blocks its resume; no lock file is left behind."""
        try:
            if create:
                self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise UserError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise UserError(f"{self.path} is in use by another running process") from None

    def _discard_unfinished(self) -> None:
        """What a run killed before its first checkpoint left cannot be continued: start afresh, saying
        what goes."""
        if not self.is_main:
            return
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if not found:
            return
        records = (self.path / "metrics.jsonl").read_bytes().count(b"\n") if "metrics.jsonl" in found else 0
        print(f"note: {self.path} holds an unfinished run with no checkpoint ({records} logged evaluations): "
              f"starting it afresh")
        for name in found:
            try:
                (self.path / name).unlink()
            except OSError as exc:
                raise UserError(f"cannot clear {self.path / name}: {exc.strerror or exc}") from None

    # ---- writing --------------------------------------------------------------------------------
    def write_start(self, cfg: Config, device: torch.device, argv: list[str] | None, resumed_at: int | None,
                    extra: dict | None = None) -> None:
        """config.yaml and header.json (with `extra` fields); a resumed run keeps its first header and
        notes the resume."""
        if not self.is_main:
            return
        try:
            save_config(cfg, self.path / "config.yaml")
        except OSError as exc:
            raise UserError(f"cannot write {self.path / 'config.yaml'}: {exc.strerror or exc}") from None
        header = {**run_header(device, argv), **(extra or {})}
        if resumed_at is not None:
            old = read_json_object(self.path / "header.json")
            if old is None:
                old = {"note": "the original header.json was missing or unreadable at a resume"}
            old.setdefault("resumed", []).append({"at_step": resumed_at, **header})
            header = old
        atomic_write_text(self.path / "header.json", json.dumps(header, indent=2) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        if self.is_main:
            ckpt.save(state, self.checkpoint_path)

    def write_summary(self, summary: dict) -> None:
        from repro import plots

        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
        if self.log.records:
            plots.plot_run(self.path)

    def device_name(self) -> str:
        header = read_json_object(self.path / "header.json") or {}
        return header.get("device", "unknown")

