"""Populations: M members of one task and architecture, trained at once as one stacked model.

A member is what the solo run of its config would train: its own Task(cfg_i, device), so its own
initial parameters, data split and batch order (all from its seed), and its own hyperparameters
(repro/population_optim.py, repro/population_filter.py). The members' parameters live in the rows of
one flat tensor `flat` of shape [M, N] (N = the model's parameter count, in named_parameters()
order; `params()` gives per-name views [M, *shape]). One flat tensor makes the per-member optimizer
and filter a few whole-tensor ops, and per-member reductions one op each.

The task's loss_and_sums() and evaluate() run for all members at once: the task's own population_*
methods where it has them (population_native: mod-97's batched Decoder, 5-7% faster than vmap over
nn.MultiheadAttention on an H200, results/bench), otherwise torch.func.vmap over
torch.func.functional_call of the first member's task (the template), with member i's parameters
and member i's tensor data swapped in. A member's tensor data are the task attributes that are
tensors and differ between members (mod-97's seed-dependent train/val split; MNIST has none: every
seed reads the same images). Anything else the task reads in those calls (its config, its model's
buffers) must be equal across members. mod-97 and MNIST stack (STACKABLE_TASKS); IMDb and QM9 do not
(NOT_STACKABLE says why). Backward of the summed member losses gives each member its own gradient in
flat.grad: members share no parameter, so d(sum_j loss_j)/d(row i) = d(loss_i)/d(row i).

A loop's step (clip -> filter -> optimizer step, as the solo engine):
    optimizer.set_lr_factor(warmup_factor)              # during warm-up only, as the solo engine
    batch = population.train_batch(step)                # member i's batch is tasks[i].train_batch(step)
    losses, sums = population.forward_backward(batch)   # [M], [M, k] or None; gradients in flat.grad
    active &= population.finite_members(losses)         # a diverged member stops, the others go on
    population.clip_grad_norms_(max_norms)              # if any member clips
    filter.step(active); optimizer.step(active)         # a stopped member's state no longer changes
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from repro.errors import UserError
from repro.tasks.base import Task

# config fields a population's members may differ in; every other field is shared. seed: init, split and
# batch order; the optimizer's and filter's hyperparameters are per member (optimizer, window_size,
# filter_type, warmup_steps and two_stage are not); the rest is a member's own bookkeeping
MEMBER_FIELDS = frozenset({
    "seed", "lr", "weight_decay", "beta1", "beta2", "momentum", "filter", "alpha", "lamb", "clip_grad_norm",
    "label", "out_dir", "early_stop_acc", "early_stop_patience",
})


# the tasks a population can train, each tested against its solo runs (tests/test_population.py), and
# why the others cannot; the population swaps in only a member's tensor attributes, so a task keeping
# per-member data in other objects would silently give every member the template's
STACKABLE_TASKS = ("modular", "mnist")
NOT_STACKABLE = {
    "imdb": "its nn.LSTM has no vmap batching rule (aten::lstm.input, no fallback either)",
    "qm9": "its padded batch shapes follow each seed's split, and its evaluation batch is a graph object "
           "(not a tensor) the population cannot swap per member",
}


def unsupported_flags(cfg) -> list[str]:
    """What a population cannot train as the solo run would: an fp16 loss scaler (one member's overflow
    would skip every member's step), micro-batches, skipped steps. Such members train solo."""
    return [flag for flag, on in (("--amp fp16", cfg.amp == "fp16"),
                                  ("--grad_accum_steps", cfg.grad_accum_steps > 1),
                                  ("--on_nonfinite skip", cfg.on_nonfinite == "skip")) if on]


def filter_kinds(cfgs: Sequence) -> set[str]:
    """The stacked filter kinds the members' filters need: 'ema' (also for 'ema_highpass', whose EMA state
    is the same) and/or 'ma'; members without a filter need none."""
    return {"ema" if cfg.filter == "ema_highpass" else cfg.filter for cfg in cfgs} - {"none"}


def check_member_configs(cfgs: Sequence) -> None:
    """Raise UserError unless the configs can form one population: equal in every field outside
    MEMBER_FIELDS, and the members with a filter all using one kind ('ema' or 'ma'; 'ema_highpass' counts as
    'ema')."""
    if not cfgs:
        raise UserError("a population needs at least one member")
    first = cfgs[0].to_dict()
    for i, cfg in enumerate(cfgs[1:], 1):
        for key, value in cfg.to_dict().items():
            if key not in MEMBER_FIELDS and value != first.get(key):
                raise UserError(f"population members 0 and {i} differ in '{key}' ({first.get(key)!r}, {value!r}), "
                                f"which members must share")
    kinds = filter_kinds(cfgs)
    if len(kinds) > 1:
        raise UserError(f"population members mix filter kinds {sorted(kinds)}; one kind (or none) per population")


class Layout:
    """Where each parameter lives in a flat row: names, shapes and sizes in named_parameters() order."""

    def __init__(self, model: nn.Module):
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.numel = sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of flat [..., N] as {name: [..., *shape]} (writes go through to `flat`)."""
        lead = flat.shape[:-1]
        chunks = flat.split(self.sizes, dim=-1)
        return {name: chunk.view(*lead, *shape) for name, chunk, shape in zip(self.names, chunks, self.shapes)}

    def join(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """One flat row [N] from {name: tensor of the parameter's shape} (the inverse of split)."""
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"missing parameters: {missing}")
        for name, shape in zip(self.names, self.shapes):
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"parameter {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
        return torch.cat([tensors[name].reshape(-1) for name in self.names])


class _ModelCall(nn.Module):
    """forward(*args) = self.fn(*args); holds the task's model as submodule 'model', so functional_call
    can swap a member's parameters (named 'model.<parameter name>') in for the call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.fn = model, None

    def forward(self, *args):
        return self.fn(*args)


@contextlib.contextmanager
def _swapped_attributes(obj, values: dict):
    """Set obj's attributes to `values` for the duration of the block, then restore them."""
    saved = {name: getattr(obj, name) for name in values}
    try:
        for name, value in values.items():
            setattr(obj, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


def _member_data(tasks: Sequence[Task]) -> dict[str, torch.Tensor]:
    """The template's tensor attributes that differ between members, stacked [M, ...]; equal ones stay
    the template's own (MNIST's 11k images are not copied M times)."""
    differing = {}
    for name, value in vars(tasks[0]).items():
        if not isinstance(value, torch.Tensor):
            continue
        values = [vars(task).get(name) for task in tasks]
        if any(not isinstance(v, torch.Tensor) or v.shape != value.shape or v.dtype != value.dtype for v in values):
            raise ValueError(f"task attribute {name!r} differs in shape or type between members: cannot stack it")
        if not all(torch.equal(v, value) for v in values[1:]):
            differing[name] = torch.stack(values)
    return differing


def _check_same_model(tasks: Sequence[Task], layout: Layout) -> None:
    template_buffers = dict(tasks[0].model.named_buffers())
    for i, task in enumerate(tasks):
        named = list(task.model.named_parameters())
        if [n for n, _ in named] != layout.names or [tuple(p.shape) for _, p in named] != layout.shapes:
            raise ValueError(f"member {i}'s model has other parameters than member 0's")
        if not all(p.requires_grad for _, p in named):
            raise ValueError(f"member {i}'s model has frozen parameters; a population trains them all")
        buffers = dict(task.model.named_buffers())
        if buffers.keys() != template_buffers.keys() or not all(
                torch.equal(b, template_buffers[k]) for k, b in buffers.items()):
            raise ValueError(f"member {i}'s model buffers differ from member 0's; a population shares them")


class Population:
    """M members' parameters stacked in `flat` [M, N], and the task's calls vmapped over them.

    Args:
        tasks: one Task per member, each built as its solo run builds it (Task(cfg_i, device)); their
            models' current parameters become the members' initial parameters. tasks[0] is the template
            whose methods run every member's loss and evaluation; the other tasks serve train_batch().
            After construction the tasks' models no longer hold the members' parameters: use
            member_state_dict(i).
    """

    def __init__(self, tasks: Sequence[Task]):
        if not tasks:
            raise ValueError("a population needs at least one member")
        name = tasks[0].name
        if name not in STACKABLE_TASKS:
            reason = NOT_STACKABLE.get(name, "it has not been tested as one")
            raise UserError(f"task {name} cannot train as a population: {reason}")
        self.tasks = list(tasks)
        self.template = self.tasks[0]
        self.layout = Layout(self.template.model)
        _check_same_model(self.tasks, self.layout)
        rows = [self.layout.join({n: p.detach() for n, p in t.model.named_parameters()}) for t in self.tasks]
        self.flat = torch.stack(rows).requires_grad_()  # a leaf: backward fills flat.grad [M, N]
        self.member_data = _member_data(self.tasks)
        self._stack_data()
        self.native = self.template.population_native
        self._call = _ModelCall(self.template.model)

    def _stack_data(self) -> None:
        """stacked_data: what a native task reads, every tensor attribute per member: the differing ones
        stacked, the others the template's, expanded (no copy)."""
        self.stacked_data = {name: self.member_data.get(name, value.expand(self.size, *value.shape))
                             for name, value in vars(self.template).items() if isinstance(value, torch.Tensor)}

    @property
    def size(self) -> int:
        return self.flat.shape[0]

    @torch.no_grad()
    def keep_(self, rows: list[int]) -> None:
        """Keep only the members in `rows` (the others have stopped): their parameters and data become the
        new stack, in that order; `flat` is a new leaf without a gradient. The template stays (its methods
        and the data members share serve the rest)."""
        self.flat = self.flat.detach()[rows].clone().requires_grad_()
        self.tasks = [self.tasks[i] for i in rows]
        self.member_data = {name: value[rows] for name, value in self.member_data.items()}
        self._stack_data()

    def params(self) -> dict[str, torch.Tensor]:
        """{name: [M, *shape]} views of `flat` (differentiable)."""
        return self.layout.split(self.flat)

    # ---- the task's calls, for all members ---------------------------------------------------
    def _vmapped(self, fn, *args, in_dims: tuple = ()):
        """fn(*args) for every member, where fn calls the template's methods: vmap over the members'
        parameters, tensor data and the args whose entry in in_dims is 0 (the others are shared)."""
        self._call.fn = fn

        def call(params, data, *member_args):
            with _swapped_attributes(self.template, data):
                return functional_call(self._call, {"model." + k: v for k, v in params.items()}, member_args)

        dims = (0, 0) + (in_dims or (None,) * len(args))
        return vmap(call, in_dims=dims)(self.params(), self.member_data, *args)

    def train_batch(self, step: int):
        """The members' batches of update `step`, stacked on a new dim 0: member i's is its solo run's."""
        return torch.stack([task.train_batch(step) for task in self.tasks])

    def loss_and_sums(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(losses [M], the task's batch sums [M, k] or None) of stacked member batches (train_batch)."""
        def loss_and_sums(member_batch):
            loss, sums = self.template.loss_and_sums(member_batch)
            return (loss,) if sums is None else (loss, sums)  # vmap returns tensors only

        if self.native:
            return self.template.population_loss_and_sums(self.params(), self.stacked_data, batch)
        out = self._vmapped(loss_and_sums, batch, in_dims=(0,))
        return out[0], (out[1] if len(out) > 1 else None)

    def forward_backward(self, batch, set_to_none: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every member's gradient into flat.grad (replacing what was there; set_to_none=False zeroes the
        old tensor instead, keeping its address, as CUDA graphs need); returns (losses [M], detached,
        and the batch sums [M, k] or None)."""
        if set_to_none:
            self.flat.grad = None
        elif self.flat.grad is not None:
            self.flat.grad.zero_()
        losses, sums = self.loss_and_sums(batch)
        losses.sum().backward()  # exact per member: d(sum)/d(loss_i) = 1
        return losses.detach(), sums

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        """The task's evaluation for every member: {metric: [M]}."""
        if self.native:
            return self.template.population_evaluate(self.params(), self.stacked_data, step)
        return self._vmapped(lambda: self.template.evaluate(step))

    def train_metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task's training metrics from each member's summed batch sums [M, k]: {metric: [M]}."""
        return vmap(self.template.train_metrics)(sums)

    # ---- per-member reductions (no host sync) -------------------------------------------------
    @torch.no_grad()
    def finite_members(self, losses: torch.Tensor) -> torch.Tensor:
        """[M] bool: the member's loss and every entry of its gradient are finite."""
        return torch.isfinite(losses) & torch.isfinite(self.flat.grad).all(dim=1)

    @torch.no_grad()
    def clip_grad_norms_(self, max_norms: torch.Tensor) -> torch.Tensor:
        """Per member, torch.nn.utils.clip_grad_norm_'s formula: the total norm is the 2-norm of the
        parameters' 2-norms; a gradient whose norm exceeds max_norm is scaled by max_norm / (norm + 1e-6).
        max_norms: [M] (float), 0 = no clipping for that member. Returns the total norms [M]."""
        grads = self.layout.split(self.flat.grad)
        norms = torch.stack([torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim))) for g in grads.values()], 1)
        total = torch.linalg.vector_norm(norms, dim=1)
        max_norms = max_norms.to(total.dtype)
        coef = torch.clamp(max_norms / (total + 1e-6), max=1.0)
        coef = torch.where(max_norms > 0, coef, torch.ones_like(coef))
        self.flat.grad.mul_(coef[:, None])
        return total

    # ---- members as ordinary states -----------------------------------------------------------
    @torch.no_grad()
    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's model state_dict, as its solo run's model.state_dict() (copies; the buffers are
        the template's, which every member shares)."""
        row = self.layout.split(self.flat.detach()[i])
        return {k: (row[k] if k in row else v).clone() for k, v in self.template.model.state_dict().items()}

    @torch.no_grad()
    def load_member_state_dicts(self, states: Sequence[dict]) -> None:
        """Set every member's parameters from an ordinary model state_dict (e.g. each member's checkpoint)."""
        if len(states) != self.size:
            raise ValueError(f"{len(states)} state dicts for {self.size} members")
        device, dtype = self.flat.device, self.flat.dtype
        self.flat.copy_(torch.stack([self.layout.join(sd).to(device=device, dtype=dtype) for sd in states]))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{name: stacked parameter [M, *shape]} (references, as nn.Module.state_dict)."""
        return {k: v.detach() for k, v in self.params().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in self.params().items():
            if name not in state or state[name].shape != value.shape:
                raise ValueError(f"stacked parameter {name!r} missing or of another shape")
            value.copy_(state[name])
