"""The one training loop. It is the only caller of the Grokfast filter.

Per step: batch -> loss -> backward -> (clip) -> filter -> optimizer step, with no host
synchronisation: losses and evaluation results stay on the device and are copied to the host in
one go every `log_every_evals` evaluations (or every few seconds), when metrics are written, the
progress bar moves, early stopping and non-finite losses are checked, and checkpoints are saved.

A step may be cut into micro-batches (--grad_accum_steps) and ranks (torchrun, repro/distributed.py)
and run under autocast (--amp, repro/precision.py); the filter always runs once per update, on the
whole batch's unscaled, all-reduced, clipped gradient.

A non-finite loss or gradient found at a flush (--on_nonfinite stop) is traced back by an eager
replay, with a check after every step, from the last state this run saved (or its start): batches are
a pure function of (seed, step), so the replay retraces the run; the state before the first
non-finite step is checkpointed and the run stops, naming that step.
"""
import copy
import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import torch

from grokfast import GradFilter
from repro import checkpoint as ckpt
from repro import distributed
from repro.config import Config, run_name, save_config
from repro.errors import RunAlreadyFinished, UserError
from repro.graphs import GraphedEvaluate, GraphedTrainStep
from repro.metrics import MetricsLog, atomic_write_text, run_header, summarize
from repro.precision import Precision
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
    # one kernel for the whole update on the GPU; not with fp16's GradScaler, whose step() always calls a
    # fused optimizer (the kernel itself skips inf steps), which would run the filter's pre-hook on them
    fused = device.type == "cuda" and cfg.amp != "fp16"
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


@dataclasses.dataclass
class NonFinite:
    what: str  # "training loss", "gradient" or "parameters"
    step: int  # the update (1-based) at which it appeared
    saved: bool = True  # False: not even the replay's starting state is finite, nothing is saved


def out_dir_for(cfg: Config, task: Task) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.results_dir) / task.name / run_name(cfg, task.run_name_part())


class Trainer:
    def __init__(self, cfg: Config, task_cls, argv: list[str] | None = None):
        self.cfg = cfg
        self.device, self.dist = distributed.setup(resolve_device(cfg.device))
        self.is_main = self.dist is None or self.dist.is_main
        self.task: Task = task_cls(cfg, self.device)
        self.model = self.task.model  # the bare model: state dicts and the filter's parameter names
        self.split = cfg.grad_accum_steps > 1 or self.dist is not None  # a step's batch is cut up
        if self.split and self.task.batch_dim is None:
            raise UserError(f"task {self.task.name} cannot cut its batches: it supports neither "
                            f"--grad_accum_steps > 1 nor data-parallel runs")
        if self.dist:  # the task's loss and evaluation then go through DDP's forward
            self.task.model = self.dist.wrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.precision = Precision(cfg.amp, self.device)
        self.optimizer = make_optimizer(cfg, self.params, self.device, capturable=cfg.cuda_graphs)
        self.filter = make_filter(cfg, self.model)
        if self.filter and self.precision.scaler:  # runs inside scaler.step(): not on fp16 overflow steps
            self.filter.attach(self.optimizer)
        self.out_dir = out_dir_for(cfg, self.task)
        if cfg.compile:  # fuses the many tiny kernels of these small models; compiles at the first step
            self.task.loss_and_sums = torch.compile(self.task.loss_and_sums)
        graphs = cfg.cuda_graphs and self.device.type == "cuda"
        # a graph replays one fixed computation; micro-batches, autocast/scaler, DDP and the per-step
        # checks of --on_nonfinite skip stay eager (simpler, and those runs are not launch-bound)
        self.use_graphs = (graphs and self.task.graph_safe_loss and cfg.on_nonfinite != "skip"
                           and not self.split and cfg.amp == "none")
        self.graphed_step, self.eager_step_done = None, False
        self.graphed_eval = (GraphedEvaluate(self.task)
                             if graphs and self.task.graph_safe_eval and not self.dist else None)
        self.grads_finite = torch.ones((), device=self.device)  # cleared by a non-finite clipping norm
        self.total_steps = cfg.steps
        self.step = 0
        self.stopped = "budget"
        self.elapsed_offset_s = 0.0  # wall time of earlier segments of a resumed run
        self.resumed_peak_mb = None  # and their peak GPU memory
        self.window_sums: list[torch.Tensor] = []  # the task's training-batch sums since the last evaluation
        # evaluations may ride on the next update's forward (Task.carries_eval) when an update is one
        # forward on one process; `carry` is an evaluation waiting for it: (step, training metrics, mark)
        # (under --amp the carried forward would run in half precision, a standalone evaluation does not)
        self.may_carry = not self.split and cfg.on_nonfinite != "skip" and cfg.amp == "none"
        self.carry: tuple | None = None
        self._prepare_out_dir(argv)

    # ---- run folder -------------------------------------------------------------------------
    def _prepare_out_dir(self, argv) -> None:
        checkpoint_path = self.out_dir / ckpt.FILENAME
        summary_path = self.out_dir / "summary.json"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"run folder {self.out_dir} exists and is not a directory")
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
        if self.dist:  # every rank has looked before rank 0 writes anything
            self.dist.barrier()
        if self.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create run folder {self.out_dir}: {exc.strerror or exc}") from None
        self.log = MetricsLog(self.out_dir / "metrics.jsonl", write=self.is_main)
        self.source_path = None  # where the last finite state this run saved lies (None: its start)
        if self.cfg.resume:
            state = ckpt.load(checkpoint_path, self.device)
            ckpt.check_compatible(state["config"], self.cfg)
            self._load_state(state)
            self.log.truncate_to(state["num_records"])
            self.source_path = checkpoint_path
        if not self.is_main:
            return
        save_config(self.cfg, self.out_dir / "config.yaml")
        header = run_header(self.device, argv)
        if self.cfg.resume:  # keep the original header, note the resume
            old = json.loads((self.out_dir / "header.json").read_text())
            old.setdefault("resumed", []).append({"at_step": self.step, **header})
            header = old
        atomic_write_text(self.out_dir / "header.json", json.dumps(header, indent=2) + "\n")

    # ---- checkpoint -------------------------------------------------------------------------
    def _training_state(self) -> dict:
        """What determines the rest of the run (beside the config and the data)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "filter": self.filter.state_dict() if self.filter else None,
            "scaler": self.precision.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def _state(self) -> dict:
        return {
            **self._training_state(),
            "config": self.cfg.to_dict(),
            "num_records": sum(1 for r in self.log.records if r["step"] <= self.step),
            "elapsed_s": self.elapsed_offset_s + self.clock.seconds_now()
            if hasattr(self, "clock") else 0.0,
            "timer": (self.timer.total_s, self.timer.count),
            "peak_gpu_mem_mb": self._peak_gpu_mem_mb(),
        }

    def _load_training_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.filter:
            self.filter.load_state_dict(state["filter"])
        self.precision.load_state_dict(state.get("scaler"))
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]

    def _load_state(self, state: dict) -> None:
        self._load_training_state(state)
        self.elapsed_offset_s = state["elapsed_s"]
        self._resumed_timer = state["timer"]
        self.resumed_peak_mb = state.get("peak_gpu_mem_mb")
        self._restore_window(state.get("train_sums"))

    def _restore_window(self, sums: torch.Tensor | None) -> None:
        """Start the window of training-batch sums from a checkpoint's (None: empty). They are all ranks'
        together: rank 0 carries them on, the others start from zeros (so every rank has a tensor to
        all-reduce, even if no step follows)."""
        self.window_sums = [] if sums is None else [sums if self.is_main else torch.zeros_like(sums)]

    def _train_sums(self) -> torch.Tensor | None:
        """The task's training-batch sums over the steps since the last evaluation (None: it has none)."""
        if not self.window_sums:
            return None
        if len(self.window_sums) > 1:  # one tensor from now on: a stack and a sum per evaluation
            self.window_sums[:] = [torch.stack(self.window_sums).sum(0)]
        return self.window_sums[0]

    def save_checkpoint(self) -> None:
        self.clock.sync()
        path = self.out_dir / ckpt.FILENAME
        sums = self._train_sums()  # a mid-epoch checkpoint carries the epoch's batches so far
        if self.dist and sums is not None:
            sums = self.dist.sum(sums)
        if self.is_main:
            ckpt.save({**self._state(), "train_sums": sums}, path)
        self.source_path, self.initial_state = path, None  # later non-finite recovery starts here

    # ---- the loop ---------------------------------------------------------------------------
    def _clip(self) -> torch.Tensor | None:
        if not self.cfg.clip_grad_norm:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm, foreach=True)
        if not self.precision.scaler:  # fp16 overflow is the scaler's business: it skips the step
            self.grads_finite.mul_(torch.isfinite(norm))  # checked at the next flush, no sync here
        return norm

    def _phases(self) -> list:
        """What follows backward for CUDA graphs, in the paper's order: clip, filter, optimizer step;
        each with whether it may be captured in a graph (see repro/graphs.py)."""
        phases = [(self._clip, True)] if self.cfg.clip_grad_norm else []
        if self.filter:
            phases.append((self.filter.step, self.filter.kind == "ema" and not self.cfg.two_stage))
        phases.append((self.optimizer.step, self.cfg.optimizer in ("Adam", "AdamW")))
        return phases

    def _set_schedule(self, step: int) -> None:
        cfg = self.cfg
        if step <= cfg.warmup_steps:  # from update warmup_steps on the lr is constant (graphs rely on it)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * warmup_factor(cfg, step)
        if self.filter and cfg.two_stage:
            self.filter.enabled = step >= TWO_STAGE_STEPS

    def _carries(self, step: int) -> bool:
        """Whether update step + 1 also runs the forward of the evaluation after `step` updates."""
        return self.may_carry and step >= 1 and self.task.carries_eval(step)

    def _batch(self, step: int):
        return self.task.train_batch(step, carry=step) if self._carries(step) else self.task.train_batch(step)

    def _split(self, step: int, sums: torch.Tensor | None) -> tuple[torch.Tensor | None, dict | None]:
        """Update step + 1's sums -> (its batch sums, the carried evaluation's results or None)."""
        return self.task.split_carried(sums) if self._carries(step) and sums is not None else (sums, None)

    def _train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One update; returns (loss, the task's sums or None: the batch's, then a carried evaluation's)."""
        self._set_schedule(step)
        batch = self._batch(step)
        if self.use_graphs and step > self.cfg.warmup_steps and self.eager_step_done:
            if self.graphed_step is None:  # after an eager step: lazy state exists, grads have addresses
                self._capture_next_eval(step)
                self.graphed_step = GraphedTrainStep(self.task.loss_and_sums,
                                                     [p for p in self.params if p.grad is not None], self._phases())
            return self.graphed_step(batch)
        loss, sums, problem = self._eager_step(batch, check=self.cfg.on_nonfinite == "skip")  # skip: a sync per step
        if problem:  # a skipped update's batch counts in no metric
            self.skipped_steps += 1
            return loss, None
        self.eager_step_done = True
        return loss, sums

    def _evaluates_after(self, step: int) -> bool:
        """Whether the run evaluates after `step` updates: where the task says, and after its last."""
        return self.task.is_eval_step(step) or step >= self.total_steps

    def _capture_next_eval(self, step: int) -> None:
        """Capture the next evaluation's graph before the first training graph. A fresh run usually
        evaluates before its first graphed step, a resumed one may not; the capture order moves the peak
        GPU memory (an evaluation's eager warm-up on top of the training graphs' pool: +160 MB on mod-97),
        so a fixed order keeps a resumed run's peak equal to an uninterrupted one's."""
        if self.graphed_eval is None:
            return
        nxt = step + 1
        while not self._evaluates_after(nxt):
            nxt += 1
        key = self.task.eval_graph_key(nxt)
        if key is not None:
            self.graphed_eval.capture(nxt, key)

    def _eager_step(self, batch, check: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
        """backward -> (unscale) -> clip -> filter -> optimizer step. With `check`, a non-finite loss or
        gradient (a host sync) leaves the update undone; returns (loss share, batch sums, what was
        non-finite)."""
        self.optimizer.zero_grad(set_to_none=not self.use_graphs)  # graphs need fixed .grad tensors
        loss, sums = self._forward_backward(batch)
        self.precision.unscale_(self.optimizer)  # before clipping and the filter: they see true gradients
        norm = self._clip()
        if check:
            problem = self._nonfinite(loss, norm)
            if problem:
                self.precision.skip()
                return loss, sums, problem
        if self.filter and not self.precision.scaler:  # with a scaler the filter runs in scaler.step
            self.filter.step()
        self.precision.step(self.optimizer)
        return loss, sums, None

    def _forward_backward(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradient of the global batch's mean loss into .grad (all-reduced under DDP); returns this
        rank's share of that loss (the loss itself on one process) and of the task's batch sums."""
        if not self.split:
            with self.precision.autocast():
                loss, sums = self.task.loss_and_sums(batch)
            self.precision.backward(loss)
            return loss.detach(), sums
        rank, world = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        parts = distributed.micro_batches(batch, self.task.batch_dim, self.cfg.grad_accum_steps, rank, world)
        total, total_sums = 0.0, None
        for i, (chunk, weight) in enumerate(parts):
            with distributed.no_sync(self.task.model, sync=i == len(parts) - 1):
                with self.precision.autocast():
                    loss, sums = self.task.loss_and_sums(chunk)
                    loss = loss * weight
                self.precision.backward(loss)
            total = total + loss.detach()
            if sums is not None and weight:  # sums, not means: the micro-batches' add up to the batch's
                total_sums = sums if total_sums is None else total_sums + sums  # (weight 0: padding)
        return total, total_sums

    # ---- non-finite values ------------------------------------------------------------------
    def _nonfinite(self, loss: torch.Tensor, norm: torch.Tensor | None) -> str | None:
        """What of this step is non-finite: 'training loss', 'gradient' or None (host syncs)."""
        if not bool(torch.isfinite(self.dist.sum(loss) if self.dist else loss)):
            return "training loss"
        if self.precision.scaler:  # an fp16 overflow is normal: the scaler skips the step
            return None
        if norm is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        return None if bool(torch.isfinite(norm)) else "gradient"

    def _params_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def _recover(self, what: str, bad_step: int, limit: int) -> None:
        """Replay from the last finite state up to `limit` updates, checking loss, gradient and
        parameters at every step; stop before the first non-finite one (or at `limit`, blaming
        `what` at `bad_step`). Leaves the model in that state, for the checkpoint."""
        state = ckpt.load(self.source_path, self.device) if self.source_path else self.initial_state
        self._load_training_state(state)
        self._restore_window(state.get("train_sums"))  # so the checkpoint saved after this matches its step
        if not self._params_finite():
            self.nonfinite = NonFinite(what, bad_step, saved=False)
            return
        while self.step < limit:
            self._set_schedule(self.step)
            _, sums, problem = self._eager_step(self._batch(self.step), check=True)
            sums = self._split(self.step, sums)[0]  # the replay retraces the run, carried forwards too
            if problem:
                self.nonfinite = NonFinite(problem, self.step + 1)
                return
            if not self._params_finite():  # this update broke them: replay once more, stopping before it
                return self._recover("parameters", self.step + 1, limit=self.step)
            self.step += 1
            if sums is not None:
                self.window_sums.append(sums)
            if self._evaluates_after(self.step):  # the run evaluated here: its window started anew
                self.window_sums.clear()
        self.nonfinite = NonFinite(what, bad_step)

    def _check_finite(self, losses: torch.Tensor, first_step: int) -> None:
        """--on_nonfinite stop: on a non-finite loss, clipping norm or parameter, go back to the last
        finite state (see _recover). Checking the parameters at every flush means a checkpoint only
        ever holds a finite state."""
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = first_step + int(bad[0]) + 1
            self._recover("training loss", step, limit=step - 1)
        elif not bool(self.grads_finite):
            self._recover("gradient", self.step, limit=self.step)
        elif not self._params_finite():
            self._recover("parameters", self.step, limit=self.step)

    def _flush(self) -> None:
        """Copy buffered device results to the host; write metrics; check stop conditions."""
        self.clock.sync()
        self.timer.collect()
        self.eval_timer.collect()
        losses = torch.stack(self.pending_losses) if self.pending_losses else torch.zeros(0, device=self.device)
        if self.dist:  # the ranks' shares -> the global batch's loss, the same on every rank
            losses = self.dist.sum(losses)
        losses = losses.cpu()
        first_step = self.step - len(self.pending_losses)
        self.pending_losses.clear()
        if self.cfg.on_nonfinite == "stop":
            self._check_finite(losses, first_step)  # may go back to an earlier step
        if self.pending_evals:
            # one device->host copy for all buffered evaluations; key sets may differ between them
            flat = torch.cat([torch.stack([v.float() for v in ev.values()]) for _, ev, _ in self.pending_evals])
            flat = flat.cpu().tolist()
            records, offset = [], 0
            for step, ev, mark in self.pending_evals:
                row = dict(zip(ev, flat[offset:offset + len(ev)]))
                offset += len(ev)
                if step > self.step:  # evaluated after the state a non-finite stop went back to
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
        if self.progress is not None and self.step >= self.progress.n:
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
        self.nonfinite, self.interrupted, self.skipped_steps = None, None, 0
        # a fresh run's start, where a non-finite recovery replays from until a checkpoint is saved
        self.initial_state = None if self.source_path else copy.deepcopy(self._training_state())
        self.streak = 0
        self._check_early_stop(self.log.records)  # a resumed run continues its streak
        self.last_flush = time.monotonic()
        self.progress = tqdm(total=self.total_steps, initial=self.step, desc=self.out_dir.name,
                             disable=not cfg.progress or not self.is_main, dynamic_ncols=True, mininterval=1.0)
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
            loss, sums = self._train_step(self.step)
            sums, carried = self._split(self.step, sums)
            if self.carry is not None:  # the previous evaluation's forward ran in this update's
                carried_step, train_part, mark = self.carry
                self.pending_evals.append((carried_step, {**train_part, **carried}, mark))
                self.carry = None
            self.pending_losses.append(loss)
            if sums is not None:
                self.window_sums.append(sums)
            self.timer.end(begin)
            self.step += 1
            at_checkpoint = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            if self._evaluates_after(self.step):
                train_part = {}
                sums = self._train_sums()
                if sums is not None:  # training metrics from the batches since the last evaluation
                    train_part = self.task.train_metrics(self.dist.sum(sums) if self.dist else sums)
                    self.window_sums.clear()
                if self._carries(self.step) and not self._flush_due(at_checkpoint, extra_evals=1):
                    # the next update runs this evaluation (no flush now: the loop gets there)
                    self.carry = (self.step, train_part, self.clock.mark())
                else:  # by itself (the next update may still run its forward, as it does by step alone)
                    begin = self.eval_timer.begin()
                    key = self.task.eval_graph_key(self.step) if self.graphed_eval else None
                    result = self.task.evaluate(self.step) if key is None else self.graphed_eval(self.step, key)
                    self.pending_evals.append((self.step, {**train_part, **result}, self.clock.mark()))
                    self.eval_timer.end(begin)
            if self.carry is None and self._flush_due(at_checkpoint):
                self._flush()
                if self.nonfinite is not None:
                    self.stopped = f"non-finite {self.nonfinite.what} at step {self.nonfinite.step}"
                    return
                if at_checkpoint:
                    self.save_checkpoint()
                if self.interrupted:
                    self.stopped = f"interrupted ({self.interrupted}) at step {self.step}"
                    return
                if self.stopped != "budget":
                    return

    def _flush_due(self, at_checkpoint: bool, extra_evals: int = 0) -> bool:
        """Whether to flush now (with `extra_evals` more evaluations buffered). Ranks must flush together
        (a flush holds collectives): they agree on Ctrl-C and time-based flushes every POLL_STEPS steps."""
        due = (len(self.pending_evals) + extra_evals >= self.cfg.log_every_evals or at_checkpoint
               or self.step == self.total_steps)
        wish = bool(self.interrupted) or time.monotonic() - self.last_flush > FLUSH_SECONDS
        if self.dist is None:
            return due or wish
        if not due and self.step % distributed.POLL_STEPS:
            return False
        any_wish, any_interrupted = self.dist.any(wish, bool(self.interrupted))
        if any_interrupted and not self.interrupted:
            self.interrupted = "signal on another rank"
        return due or any_wish

    def _finish(self) -> dict:
        nonfinite = self.nonfinite
        if nonfinite is None or nonfinite.saved:  # after a non-finite stop: the state before it
            self.save_checkpoint()
        summary = self._write_summary() if self.is_main else {"stopped": self.stopped}
        if nonfinite is not None:
            saved = (f"checkpoint of step {self.step} saved in {self.out_dir}" if nonfinite.saved
                     else f"no finite state to save (metrics in {self.out_dir})")
            raise UserError(f"non-finite {nonfinite.what} at step {nonfinite.step}; {saved} "
                            f"(--on_nonfinite skip skips such steps)")
        return summary

    def _write_summary(self) -> dict:
        from repro import plots

        wall_s = self.elapsed_offset_s + self.clock.seconds_now()  # waits for the GPU's queued work
        peak = self._peak_gpu_mem_mb()
        records = self.log.records
        summary = {"task": self.task.name, "run": self.out_dir.name, "seed": self.cfg.seed,
                   "filter": self.cfg.filter}
        summary.update(summarize(records, self.step, wall_s, self.timer.mean_ms, peak,
                                 self.log_device_name(), self.stopped))
        # mean time of one evaluation run by itself (this segment); a carried one is in a training step's
        summary["eval_ms"] = self.eval_timer.mean_ms
        if self.skipped_steps:
            summary["skipped_nonfinite_steps"] = self.skipped_steps
        summary.update(self.task.table_metrics(records))
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if records:
            plots.plot_run(self.out_dir)
        return summary

    def _peak_gpu_mem_mb(self) -> float | None:
        """Peak allocated GPU memory of the whole run: this segment's, or an earlier segment's if higher."""
        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(peak, self.resumed_peak_mb or 0.0)

    def log_device_name(self) -> str:
        return json.loads((self.out_dir / "header.json").read_text())["device"]


def train(cfg: Config, task_cls, argv: list[str] | None = None) -> dict:
    try:
        return Trainer(cfg, task_cls, argv).run()
    finally:
        distributed.shutdown()
