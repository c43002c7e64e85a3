"""The one training loop. It is the only caller of the Grokfast filter.

Per step: batch -> loss -> backward -> (clip) -> filter -> optimizer step, with no host
synchronisation: losses and evaluation results stay on the device and are copied to the host in
one go every `log_every_evals` evaluations (or every few seconds), when metrics are written, the
progress bar moves, early stopping and non-finite losses are checked, and checkpoints are saved.
"""
import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import torch

from grokfast import GradFilter
from repro import checkpoint as ckpt
from repro.config import Config, run_name, save_config
from repro.errors import RunAlreadyFinished, UserError
from repro.graphs import GraphedEvaluate, GraphedTrainStep
from repro.metrics import MetricsLog, atomic_write_text, run_header, summarize
from repro.tasks.base import Task
from repro.timing import Clock, StepTimer

TWO_STAGE_STEPS = 500  # the reference's --two_stage keeps the filter off for the first 500 steps
FLUSH_SECONDS = 5.0  # also flush this often, so the progress bar moves and a crash loses little


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available (use --device cpu)")
    return device


def make_optimizer(cfg: Config, params: list, device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    fused = device.type == "cuda"  # one kernel for the whole update on the GPU
    if cfg.optimizer == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    optimizer_cls = getattr(torch.optim, cfg.optimizer)
    return optimizer_cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                         fused=fused or None, capturable=fused and capturable)


def make_filter(cfg: Config, model: torch.nn.Module) -> GradFilter | None:
    if cfg.filter == "none":
        return None
    return GradFilter(model, kind=cfg.filter, alpha=cfg.alpha, lamb=cfg.lamb, window_size=cfg.window_size,
                      filter_type=cfg.filter_type)


def warmup_factor(cfg: Config, step: int) -> float:
    """The reference's LambdaLR: update u (0-based) uses lr * min(u / warmup, 1), so update 0 has lr 0."""
    return min(step / cfg.warmup_steps, 1.0) if cfg.warmup_steps else 1.0


def out_dir_for(cfg: Config, task: Task) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.results_dir) / task.name / run_name(cfg, task.run_name_part())


class Trainer:
    def __init__(self, cfg: Config, task_cls, argv: list[str] | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task: Task = task_cls(cfg, self.device)
        self.model = self.task.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, self.params, self.device, capturable=cfg.cuda_graphs)
        self.filter = make_filter(cfg, self.model)
        self.out_dir = out_dir_for(cfg, self.task)
        if cfg.compile:  # fuses the many tiny kernels of these small models; compiles at the first step
            self.task.loss = torch.compile(self.task.loss)
        graphs = cfg.cuda_graphs and self.device.type == "cuda"
        self.use_graphs = graphs and self.task.graph_safe_loss and cfg.on_nonfinite != "skip"
        self.graphed_step, self.eager_step_done = None, False
        self.graphed_eval = GraphedEvaluate(self.task.evaluate) if graphs and self.task.graph_safe_eval else None
        self.total_steps = cfg.steps
        self.step = 0
        self.stopped = "budget"
        self.elapsed_offset_s = 0.0  # wall time of earlier segments of a resumed run
        self._prepare_out_dir(argv)

    # ---- run folder -------------------------------------------------------------------------
    def _prepare_out_dir(self, argv) -> None:
        checkpoint_path = self.out_dir / ckpt.FILENAME
        summary_path = self.out_dir / "summary.json"
        if self.cfg.skip_finished:
            if summary_path.exists() and not json.loads(summary_path.read_text())["stopped"].startswith("interrupted"):
                raise RunAlreadyFinished(str(self.out_dir))
            if checkpoint_path.exists():
                self.cfg = dataclasses.replace(self.cfg, resume=True)
        if self.cfg.resume:
            if not checkpoint_path.exists():
                raise UserError(f"--resume: no checkpoint in {self.out_dir}")
        elif (self.out_dir / "metrics.jsonl").exists() or checkpoint_path.exists():
            raise UserError(f"{self.out_dir} already holds a run: pass --resume to continue it, "
                            f"or choose another --out_dir / --label")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        if self.cfg.resume:
            state = ckpt.load(checkpoint_path, self.device)
            ckpt.check_compatible(state["config"], self.cfg)
            self._load_state(state)
            self.log.truncate_to(state["num_records"])
        save_config(self.cfg, self.out_dir / "config.yaml")
        header = run_header(self.device, argv)
        if self.cfg.resume:  # keep the original header, note the resume
            old = json.loads((self.out_dir / "header.json").read_text())
            old.setdefault("resumed", []).append({"at_step": self.step, **header})
            header = old
        atomic_write_text(self.out_dir / "header.json", json.dumps(header, indent=2) + "\n")

    # ---- checkpoint -------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "num_records": len(self.log.records),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "filter": self.filter.state_dict() if self.filter else None,
            "rng": ckpt.rng_state(),
            "elapsed_s": self.elapsed_offset_s + self.clock.seconds_since_start(self.clock.mark())
            if hasattr(self, "clock") else 0.0,
            "timer": (self.timer.total_s, self.timer.count),
        }

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.filter:
            self.filter.load_state_dict(state["filter"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.elapsed_offset_s = state["elapsed_s"]
        self._resumed_timer = state["timer"]

    def save_checkpoint(self) -> None:
        self.clock.sync()
        ckpt.save(self._state(), self.out_dir / ckpt.FILENAME)

    # ---- the loop ---------------------------------------------------------------------------
    def _phases(self) -> list:
        """What follows backward, in the paper's order: clip, filter, optimizer step; each with
        whether it may be captured in a CUDA graph (see repro/graphs.py)."""
        cfg, phases = self.cfg, []
        if cfg.clip_grad_norm:
            phases.append((lambda: torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm, foreach=True),
                           True))
        if self.filter:
            phases.append((self.filter.step, self.filter.kind == "ema" and not cfg.two_stage))
        phases.append((self.optimizer.step, cfg.optimizer in ("Adam", "AdamW")))
        return phases

    def _train_step(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        if step <= cfg.warmup_steps:  # from update warmup_steps on the lr is constant (graphs rely on it)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * warmup_factor(cfg, step)
        if self.filter and cfg.two_stage:
            self.filter.enabled = step >= TWO_STAGE_STEPS
        batch = self.task.train_batch(step)
        if self.use_graphs and step > cfg.warmup_steps and self.eager_step_done:
            if self.graphed_step is None:  # after an eager step: lazy state exists, grads have addresses
                self.graphed_step = GraphedTrainStep(self.task.loss, [p for p in self.params if p.grad is not None],
                                                     self._phases())
            return self.graphed_step(batch)
        self.optimizer.zero_grad(set_to_none=not self.use_graphs)  # graphs need fixed .grad tensors
        loss = self.task.loss(batch)
        loss.backward()
        phases = self._phases()
        if cfg.clip_grad_norm:
            phases.pop(0)[0]()
        if cfg.on_nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a sync per step, opt-in
            self.skipped_steps += 1
            return loss.detach()
        for fn, _ in phases:
            fn()
        self.eager_step_done = True
        return loss.detach()

    def _flush(self) -> None:
        """Copy buffered device results to the host; write metrics; check stop conditions."""
        self.clock.sync()
        self.timer.collect()
        self.eval_timer.collect()
        losses = torch.stack(self.pending_losses).cpu() if self.pending_losses else torch.zeros(0)
        first_step = self.step - len(self.pending_losses)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad) and self.cfg.on_nonfinite == "stop":
            self.nonfinite_step = first_step + int(bad[0]) + 1
        self.pending_losses.clear()
        if self.pending_evals:
            # one device->host copy for all buffered evaluations; key sets may differ between them
            flat = torch.cat([torch.stack([v.float() for v in ev.values()]) for _, ev, _ in self.pending_evals])
            flat = flat.cpu().tolist()
            records, offset = [], 0
            for step, ev, mark in self.pending_evals:
                row = dict(zip(ev, flat[offset:offset + len(ev)]))
                offset += len(ev)
                if self.nonfinite_step is not None and step >= self.nonfinite_step:
                    break
                records.append({"step": step, **row,
                                "elapsed_s": round(self.elapsed_offset_s + self.clock.seconds_since_start(mark), 4)})
            self.log.append(records)
            self.pending_evals.clear()
            self._check_early_stop(records)
            if self.progress is not None and self.log.records:
                last = self.log.records[-1]
                self.progress.set_postfix_str(
                    " ".join(f"{k}={last[k]:.3f}" for k in ("train_acc", "val_acc", "val_loss") if k in last))
        if self.progress is not None:
            self.progress.update(self.step - self.progress.n)
        self.last_flush = time.monotonic()

    def _check_early_stop(self, new_records: list[dict]) -> None:
        """Stop once val_acc has held >= early_stop_acc for early_stop_patience evaluations in a row."""
        cfg = self.cfg
        if not cfg.early_stop_patience or not cfg.early_stop_acc:
            return
        for record in new_records:
            if "val_acc" not in record:  # a task's per-step record without the full evaluation
                continue
            self.streak = self.streak + 1 if record.get("val_acc", 0.0) >= cfg.early_stop_acc else 0
            if self.streak >= cfg.early_stop_patience:
                self.stopped = (f"early_stop: val_acc >= {cfg.early_stop_acc:g} for {self.streak} "
                                f"evaluations at step {record['step']}")
                return

    def _on_signal(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.clock = Clock(self.device)
        self.timer, self.eval_timer = StepTimer(self.clock), StepTimer(self.clock)
        if hasattr(self, "_resumed_timer"):
            self.timer.total_s, self.timer.count = self._resumed_timer
        self.pending_losses, self.pending_evals = [], []
        self.nonfinite_step, self.interrupted, self.skipped_steps = None, None, 0
        self.streak = 0
        self._check_early_stop(self.log.records)  # a resumed run continues its streak
        self.last_flush = time.monotonic()
        self.progress = tqdm(total=self.total_steps, initial=self.step, desc=self.out_dir.name,
                             disable=not cfg.progress, dynamic_ncols=True, mininterval=1.0)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        try:
            self._loop()
        finally:
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            self.progress.close()
        return self._finish()

    def _loop(self) -> None:
        cfg = self.cfg
        while self.step < self.total_steps:
            begin = self.timer.begin()
            self.pending_losses.append(self._train_step(self.step))
            self.timer.end(begin)
            self.step += 1
            if self.task.is_eval_step(self.step) or self.step == self.total_steps:
                evaluate = self.graphed_eval or self.task.evaluate
                begin = self.eval_timer.begin()
                self.pending_evals.append((self.step, evaluate(self.step), self.clock.mark()))
                self.eval_timer.end(begin)
            at_checkpoint = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            if (len(self.pending_evals) >= cfg.log_every_evals or at_checkpoint or self.interrupted
                    or self.step == self.total_steps or time.monotonic() - self.last_flush > FLUSH_SECONDS):
                self._flush()
                if self.nonfinite_step is not None:
                    self.stopped = f"non-finite loss at step {self.nonfinite_step}"
                    return
                if at_checkpoint:
                    self.save_checkpoint()
                if self.interrupted:
                    self.stopped = f"interrupted ({self.interrupted}) at step {self.step}"
                    return
                if self.stopped != "budget":
                    return

    def _finish(self) -> dict:
        from repro import plots

        if self.nonfinite_step is None:  # a diverged state is not worth resuming from
            self.save_checkpoint()
        self.clock.sync()
        wall_s = self.elapsed_offset_s + self.clock.seconds_since_start(self.clock.mark())
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        records = self.log.records
        summary = {"task": self.task.name, "run": self.out_dir.name, "seed": self.cfg.seed,
                   "filter": self.cfg.filter}
        summary.update(summarize(records, self.step, wall_s, self.timer.mean_ms, peak,
                                 self.log_device_name(), self.stopped))
        summary["eval_ms"] = self.eval_timer.mean_ms  # mean time of one evaluation (this segment)
        if self.skipped_steps:
            summary["skipped_nonfinite_steps"] = self.skipped_steps
        summary.update(self.task.table_metrics(records))
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if records:
            plots.plot_run(self.out_dir)
        if self.nonfinite_step is not None:
            raise UserError(f"stopped: non-finite training loss at step {self.nonfinite_step} "
                            f"(metrics up to the step before are in {self.out_dir}; "
                            f"--on_nonfinite skip skips such steps)")
        return summary

    def log_device_name(self) -> str:
        return json.loads((self.out_dir / "header.json").read_text())["device"]


def train(cfg: Config, task_cls, argv: list[str] | None = None) -> dict:
    return Trainer(cfg, task_cls, argv).run()
