"""One training update and one evaluation, run eagerly or replayed as CUDA graphs.

An update is forward + backward, then the post-backward pipeline in the paper's order:
clip -> Grokfast filter -> optimizer step. The pipeline is written once (`pipeline()`); the eager
step runs its phases in turn, the graphed step (repro/graphs.py) captures them.

A step may be cut into micro-batches (--grad_accum_steps) and ranks (torchrun, repro/distributed.py)
and run under autocast (--amp, repro/precision.py); the filter always runs once per update, on the
whole batch's unscaled, all-reduced, clipped gradient. Those runs stay eager: a graph replays one
fixed computation, and they are not launch-bound.
"""
from typing import Callable

import torch

from grokfast import GradFilter
from repro import distributed
from repro.config import Config
from repro.errors import UserError
from repro.graphs import GraphedEvaluate, GraphedTrainStep
from repro.precision import Precision
from repro.tasks.base import Task

TWO_STAGE_STEPS = 500  # the reference's --two_stage keeps the filter off for the first 500 steps

Phase = tuple[Callable[[], None], bool]  # (function, may be captured in a CUDA graph)


def make_optimizer(cfg: Config, params: list, device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    # one kernel for the whole update on the GPU; not with fp16's GradScaler, whose step() always calls a
    # fused optimizer (the kernel itself skips inf steps), which would run the filter's pre-hook on them
    fused = device.type == "cuda" and cfg.amp != "fp16"
    if cfg.optimizer == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, fused=fused or None)
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


class StepRunner:
    """Owns what an update touches: the model's parameters, optimizer, filter and precision, and the
    CUDA graphs that replay the update and the evaluation."""

    def __init__(self, cfg: Config, task: Task, device: torch.device, dist: distributed.Distributed | None):
        self.cfg, self.task, self.device, self.dist = cfg, task, device, dist
        self.model = task.model  # the bare model: state dicts and the filter's parameter names
        self.micro_batches = cfg.grad_accum_steps > 1 or dist is not None  # a step's batch is cut up
        if self.micro_batches and task.batch_dim is None:
            raise UserError(f"task {task.name} cannot cut its batches: it supports neither "
                            f"--grad_accum_steps > 1 nor data-parallel runs")
        if dist:  # the task's loss and evaluation then go through DDP's forward
            task.model = dist.wrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.precision = Precision(cfg.amp, device)
        self.optimizer = make_optimizer(cfg, self.params, device, capturable=cfg.cuda_graphs)
        self.filter = make_filter(cfg, self.model)
        if self.filter and self.precision.scaler:  # runs inside scaler.step(): not on fp16 overflow steps
            self.filter.attach(self.optimizer)
        if cfg.compile:  # fuses the many tiny kernels of these small models; compiles at the first step
            task.loss_and_sums = torch.compile(task.loss_and_sums)
        graphs = cfg.cuda_graphs and device.type == "cuda"
        # --on_nonfinite skip checks every step on the host, and fp16's loss scaler on overflow: eager
        self.use_graphs = (graphs and task.graph_safe_loss and cfg.on_nonfinite != "skip"
                           and not self.micro_batches and cfg.amp != "fp16")
        self.graphed_step: GraphedTrainStep | None = None
        self.eager_step_done = False
        self.graphed_eval = GraphedEvaluate(task) if graphs and task.graph_safe_eval and not dist else None
        self.grads_finite = torch.ones((), device=device)  # cleared by a non-finite clipping norm
        self.skipped_steps = 0  # --on_nonfinite skip: updates left undone

    # ---- the update -----------------------------------------------------------------------------
    def pipeline(self) -> list[Phase]:
        """What follows backward, in the paper's order. A phase is capturable when it is a fixed
        computation: the MA filter moves its ring-buffer slot in Python, SGD has no capturable mode, and
        a switch flipped mid-run (two-stage) would be frozen into a graph."""
        phases = [(self._clip, True)] if self.cfg.clip_grad_norm else []
        if self.filter and not self.precision.scaler:  # with a scaler the filter runs in scaler.step
            phases.append((self.filter.step, self.filter.kind in ("ema", "ema_highpass") and not self.cfg.two_stage))
        phases.append((lambda: self.precision.step(self.optimizer), self.cfg.optimizer in ("Adam", "AdamW")))
        return phases

    def _clip(self) -> None:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm, foreach=True)
        if not self.precision.scaler:  # fp16 overflow is the scaler's business: it skips the step
            self.grads_finite.mul_(torch.isfinite(norm))  # checked at the next flush, no sync here

    def _set_schedule(self, step: int) -> None:
        cfg = self.cfg
        if step <= cfg.warmup_steps:  # from update warmup_steps on the lr is constant (graphs rely on it)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * warmup_factor(cfg, step)
        if self.filter and cfg.two_stage:
            self.filter.enabled = step >= TWO_STAGE_STEPS

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update `step` (0-based) -> (this rank's share of the batch's mean loss, the task's batch sums
        or None). Graphs once the warm-up is over and one eager step has created the lazy state (filter
        EMA, optimizer moments) and the .grad tensors the graphs write into."""
        self._set_schedule(step)
        batch = self.task.train_batch(step)
        if self.use_graphs and step > self.cfg.warmup_steps and self.eager_step_done:
            if self.graphed_step is None:
                self._capture_next_eval(step)
                self.graphed_step = GraphedTrainStep(self.task.loss_and_sums,
                                                     [p for p in self.params if p.grad is not None],
                                                     self.pipeline())
            return self.graphed_step(batch)
        return self._eager_step(batch)

    def _eager_step(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.optimizer.zero_grad(set_to_none=not self.use_graphs)  # graphs need fixed .grad tensors
        loss, sums = self._forward_backward(batch)
        self.precision.unscale_(self.optimizer)  # before clipping and the filter: they see true gradients
        if self.cfg.on_nonfinite == "skip" and self._nonfinite(loss):  # a host sync per step
            self.precision.skip()
            self.skipped_steps += 1
            return loss, None  # a skipped update's batch counts in no metric
        for phase, _ in self.pipeline():
            phase()
        self.eager_step_done = True
        return loss, sums

    def _forward_backward(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradient of the global batch's mean loss into .grad (all-reduced under DDP); returns this
        rank's share of that loss (the loss itself on one process) and of the task's batch sums."""
        if not self.micro_batches:
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

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss or gradient is non-finite (host syncs). An fp16 overflow is not: the
        scaler skips that step itself."""
        if not bool(torch.isfinite(self.dist.sum(loss) if self.dist else loss)):
            return True
        if self.precision.scaler:
            return False
        grads = [p.grad for p in self.params if p.grad is not None]
        return bool(grads) and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    def params_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        key = self.task.eval_graph_key(step) if self.graphed_eval else None
        return self.task.evaluate(step) if key is None else self.graphed_eval(step, key)

    def _capture_next_eval(self, step: int) -> None:
        """Capture the next evaluation's graph before the first training graph. A fresh run usually
        evaluates before its first graphed step, a resumed one may not; the capture order moves the peak
        GPU memory (an evaluation's eager warm-up on top of the training graphs' pool), so a fixed
        order keeps a resumed run's peak equal to an uninterrupted one's."""
        if self.graphed_eval is None:
            return
        nxt = step + 1
        while not (self.task.is_eval_step(nxt) or nxt >= self.cfg.steps):
            nxt += 1
        key = self.task.eval_graph_key(nxt)
        if key is not None:
            self.graphed_eval.capture(nxt, key)

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "filter": self.filter.state_dict() if self.filter else None,
                "scaler": self.precision.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.filter:
            self.filter.load_state_dict(state["filter"])
        self.precision.load_state_dict(state.get("scaler"))
