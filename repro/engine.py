"""The training loop, the only caller of the Grokfast filter (through repro/step.py).

Per step: the update (repro/step.py), then, where the task says, an evaluation. Nothing in the loop waits
for the GPU (but for IMDb's batch widths, read twice per 15 steps: repro/tasks/imdb.py): results stay on
the device until a flush (every `log_every_evals` evaluations or few seconds) copies them in one go,
writes the metrics, moves the progress bar, checks early stopping and non-finite values, and may
checkpoint (the run's files: repro/run_folder.py). A non-finite loss, gradient or parameter stops the run
(exit 2) naming its step(s) and writes no checkpoint: the last one holds a finite state.
"""
import signal
import time

import torch

from repro import checkpoint as ckpt
from repro import distributed
from repro.config import Config
from repro.errors import UserError
from repro.metrics import early_stop, summarize
from repro.precision import set_tf32
from repro.run_folder import RunFolder, out_dir_for
from repro.step import StepRunner
from repro.tasks.base import Task
from repro.timing import Clock, StepTimer

FLUSH_SECONDS = 5.0  # also flush this often, so the progress bar moves and a crash loses little
# wall time, timers and peak memory of a run's earlier segments: none for a fresh run (a resume reads them)
NO_EARLIER_SEGMENTS = {"elapsed_s": 0.0, "timer": (0.0, 0), "eval_timer": (0.0, 0), "peak_gpu_mem_mb": None}


class Trainer:
    def __init__(self, cfg: Config, task_cls, argv: list[str] | None = None):
        set_tf32(cfg.tf32)
        self.device, self.dist = distributed.setup(cfg.device)
        self.is_main = self.dist is None or self.dist.is_main
        self.task: Task = task_cls(cfg, self.device)
        self.runner = StepRunner(cfg, self.task, self.device, self.dist)
        self.step, self.window_sums = 0, []  # the task's training-batch sums since the last evaluation
        self.checkpoint_step: int | None = None  # the step of the last checkpoint in the folder
        self.previous = dict(NO_EARLIER_SEGMENTS)
        self.folder = RunFolder(out_dir_for(cfg, self.task.run_name_part()), self.is_main)
        self.out_dir = self.folder.path
        self.cfg, state = self.folder.open(cfg, self.device, self.dist.barrier if self.dist else None)
        try:
            if state is not None:
                self._load(state)
            self.folder.write_start(self.cfg, self.device, argv, resumed_at=self.step if state else None)
        except BaseException:
            self.folder.close()
            raise
        self.stopped, self.interrupted = "budget", None

    # ---- state ----------------------------------------------------------------------------------
    def _load(self, state: dict) -> None:
        self.runner.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        self.step = self.checkpoint_step = state["step"]
        for key in self.previous:
            self.previous[key] = state.get(key, self.previous[key])
        sums = state.get("train_sums")  # all ranks' together: rank 0 carries them on, the others start from
        if sums is not None:  # zeros (so every rank has a tensor to all-reduce, even if no step follows)
            self.window_sums = [sums if self.is_main else torch.zeros_like(sums)]

    def _train_sums(self) -> torch.Tensor | None:
        """The task's training-batch sums over the steps since the last evaluation (None: it has none)."""
        if not self.window_sums:
            return None
        sums = torch.stack(self.window_sums).sum(0)
        self.window_sums = [sums]
        return self.dist.sum(sums) if self.dist else sums

    def save_checkpoint(self) -> None:
        self.clock.sync()
        sums = self._train_sums()  # a mid-epoch checkpoint carries the epoch's batches so far
        state = {**self.runner.state_dict(), "config": self.cfg.to_dict(), "step": self.step,
                 "rng": ckpt.rng_state(), "train_sums": sums,
                 "num_records": sum(1 for r in self.folder.log.records if r["step"] <= self.step),
                 **self._totals()}
        self.folder.save_checkpoint(state)
        self.checkpoint_step = self.step

    def _totals(self) -> dict:
        """Wall time, step timers and peak memory over every segment of the run so far."""
        return {"elapsed_s": self.previous["elapsed_s"] + self.clock.seconds_now(),
                "timer": self.timer.totals(), "eval_timer": self.eval_timer.totals(),
                "peak_gpu_mem_mb": self._peak_gpu_mem_mb()}

    def _peak_gpu_mem_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return max(torch.cuda.max_memory_allocated(self.device) / 2**20, self.previous["peak_gpu_mem_mb"] or 0.0)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.clock = Clock(self.device)
        self.timer = StepTimer(self.clock, *self.previous["timer"])
        self.eval_timer = StepTimer(self.clock, *self.previous["eval_timer"])
        self.pending_losses, self.pending_evals = [], []
        self.nonfinite, self.streak = None, 0
        self._check_early_stop(self.folder.log.records)  # a resumed run continues its streak
        self.last_flush = time.monotonic()
        self.progress = tqdm(total=cfg.steps, initial=self.step, desc=self.out_dir.name, dynamic_ncols=True,
                             disable=not cfg.progress or not self.is_main, mininterval=1.0)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.task.model.train()
        try:
            self._loop()
            return self._finish()
        finally:
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            self.progress.close()
            self.folder.close()

    def _on_signal(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def _loop(self) -> None:
        cfg = self.cfg
        while self.step < cfg.steps:
            begin = self.timer.begin()
            loss, sums = self.runner.train_step(self.step)
            self.timer.end(begin)
            self.pending_losses.append(loss)
            if sums is not None:
                self.window_sums.append(sums)
            self.step += 1
            if self.task.is_eval_step(self.step) or self.step == cfg.steps:
                self._evaluate()
            at_checkpoint = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            if self._flush_due(at_checkpoint):
                self._flush()
                if self.nonfinite:
                    self.stopped = self.nonfinite
                    return
                if at_checkpoint:
                    self.save_checkpoint()
                if self.interrupted:
                    self.stopped = f"interrupted ({self.interrupted}) at step {self.step}"
                    return
                if self.stopped != "budget":
                    return

    def _evaluate(self) -> None:
        begin = self.eval_timer.begin()
        record = {}
        sums = self._train_sums()
        if sums is not None:  # training metrics from the batches since the last evaluation
            record = self.task.train_metrics(sums)
            self.window_sums = []
        record.update(self.runner.evaluate(self.step))
        self.pending_evals.append((self.step, record, self.clock.mark()))
        self.eval_timer.end(begin)

    def _flush_due(self, at_checkpoint: bool) -> bool:
        """Ranks must flush together (a flush holds collectives): they agree on Ctrl-C and time-based
        flushes every POLL_STEPS steps."""
        due = len(self.pending_evals) >= self.cfg.log_every_evals or at_checkpoint or self.step == self.cfg.steps
        wish = bool(self.interrupted) or time.monotonic() - self.last_flush > FLUSH_SECONDS
        if self.dist is None:
            return due or wish
        if not due and self.step % distributed.POLL_STEPS:
            return False
        any_wish, any_interrupted = self.dist.any(wish, bool(self.interrupted))
        if any_interrupted and not self.interrupted:
            self.interrupted = "signal on another rank"
        return due or any_wish

    def _flush(self) -> None:
        """Copy buffered device results to the host; write metrics; check stop conditions."""
        self.clock.sync()
        self.timer.collect()
        self.eval_timer.collect()
        losses = torch.stack(self.pending_losses) if self.pending_losses else torch.zeros(0, device=self.device)
        if self.dist:  # the ranks' shares -> the global batch's loss, the same on every rank
            losses = self.dist.sum(losses)
        first_step = self.step - len(self.pending_losses)
        self.pending_losses.clear()
        self._check_finite(losses.cpu(), first_step)
        if self.pending_evals:
            # one device->host copy for all buffered evaluations; key sets may differ between them
            flat = torch.cat([torch.stack([v.float() for v in ev.values()]) for _, ev, _ in self.pending_evals])
            flat, offset, records = flat.cpu().tolist(), 0, []
            for step, ev, mark in self.pending_evals:
                row = dict(zip(ev, flat[offset:offset + len(ev)]))
                offset += len(ev)
                elapsed = self.previous["elapsed_s"] + self.clock.seconds_since_start(mark)
                records.append({"step": step, **row, "elapsed_s": round(elapsed, 4)})
            self.pending_evals.clear()
            self.folder.log.append(records)
            self._check_early_stop(records)
            self._report(records[-1])
        if self.step >= self.progress.n:
            self.progress.update(self.step - self.progress.n)
        self.last_flush = time.monotonic()

    def _report(self, last: dict) -> None:
        shown = " ".join(f"{k}={last[k]:.3f}" for k in ("train_acc", "val_acc", "val_loss") if k in last)
        if not self.progress.disable:
            self.progress.set_postfix_str(shown)
        elif self.is_main:  # --progress false, e.g. for log files: a line per flush
            print(f"step {self.step}/{self.cfg.steps} {shown}", flush=True)

    def _check_finite(self, losses: torch.Tensor, first_step: int) -> None:
        """Whether the steps since the last flush stayed finite: loss, clipping norm, parameters."""
        if self.cfg.on_nonfinite != "stop":
            return
        bad = (~torch.isfinite(losses)).nonzero()
        window = f"steps {first_step + 1}-{self.step}"
        if len(bad):
            self.nonfinite = f"non-finite training loss at step {first_step + int(bad[0]) + 1}"
        elif not bool(self.runner.grads_finite):
            self.nonfinite = f"non-finite gradient in {window}"
        elif not self.runner.params_finite():
            self.nonfinite = f"non-finite parameters in {window}"

    def _check_early_stop(self, new_records: list[dict]) -> None:
        self.streak, reason = early_stop(new_records, self.cfg.early_stop_acc, self.cfg.early_stop_patience,
                                         self.streak)
        if reason:
            self.stopped = reason

    def _finish(self) -> dict:
        if self.nonfinite is None:
            self.save_checkpoint()
        summary = self._summary() if self.is_main else {"stopped": self.stopped}
        if self.is_main:
            self.folder.write_summary(summary)
        if self.nonfinite is not None:
            saved = (f"the checkpoint of step {self.checkpoint_step} holds the last finite state"
                     if self.checkpoint_step is not None else "no checkpoint was saved before it")
            raise UserError(f"{self.nonfinite}; {saved} ({self.out_dir}; --on_nonfinite skip skips such steps)")
        return summary

    def _summary(self) -> dict:
        summary = self.run_summary(self.folder, self.cfg, self.stopped, self._totals())  # waits for the GPU
        if self.runner.skipped_steps:
            summary["skipped_nonfinite_steps"] = self.runner.skipped_steps
        return summary

    def run_summary(self, folder: RunFolder, cfg: Config, stopped: str, totals: dict) -> dict:
        """summary.json of the run in `folder` at this step (a population writes one per member)."""
        records = folder.log.records
        summary = {"task": self.task.name, "run": folder.path.name, "seed": cfg.seed, "filter": cfg.filter}
        summary.update(summarize(records, self.step, totals["elapsed_s"], self.timer.mean_ms,
                                 totals["peak_gpu_mem_mb"], folder.device_name(), stopped))
        summary["eval_ms"] = self.eval_timer.mean_ms
        return {**summary, **self.task.table_metrics(records)}
