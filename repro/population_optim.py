"""Per-member Adam, AdamW and SGD over a population's stacked parameters.

The optimizer steps one tensor `param` of shape [M, ...] (a population's flat [M, N]) whose row i is
member i's parameters; `param.grad` holds the members' gradients. Member i follows torch.optim's
single-tensor formulas (torch/optim/adam.py `_single_tensor_adam`, sgd.py `_single_tensor_sgd`, the
path torch takes on CPU) with its own hyperparameters:

    Adam:  g += wd*p;  m = lerp(m, g, 1-beta1);  v = beta2*v + (1-beta2)*g*g;  t += 1
           p -= (lr / (1-beta1^t)) * m / (sqrt(v) / sqrt(1-beta2^t) + eps)
    AdamW: as Adam, but p *= 1 - lr*wd before the update instead of g += wd*p (decoupled decay)
    SGD:   g += wd*p;  b = g at the member's first step, else momentum*b + g (dampening 0);
           p -= lr * (g + momentum*b if nesterov else b)

Per-member hyperparameters are float64 [M] vectors (lr, weight_decay, beta1, beta2 / momentum); the
scalars torch computes in Python floats (bias corrections, step sizes, AdamW's decay factor) are
computed from them in float64 too, then cast to the parameter's dtype and broadcast as [M, 1, ...]
columns. torch's `x.add(y, alpha=a)` is written torch.addcmul(x, y, a) and its `addcdiv(value=s)` as
addcdiv(p, s*m, d): on the x86 CPU tried these round as torch's own ops (bitwise equal over three
steps; tests/test_population_optim.py requires 1e-6), so a member differs from torch.optim only
where its gradients do. On CUDA the solo engine uses fused Adam, which rounds differently anyway.
A member with momentum 0 needs no buffer (torch keeps none): 0*b + g == g exactly, so it steps with
g as torch does.

`step(active)`: members with active False keep their parameters, state and step count unchanged
(torch.where on the results, so a non-finite gradient of a stopped member cannot leak in). Warm-up:
`set_lr_factor(f)` sets lr = base_lr * f (base_lr: the constructor's lr), the engine's group["lr"].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from repro.population import Layout


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class _StackedOptimizer:
    """Shared machinery: per-member hyperparameter vectors, step counts, masked updates, state dicts.

    Subclasses set `torch_class`, `state_keys`, `member_hyperparams` (the names of the float64 [M]
    vectors) and `shared` (scalar hyperparameters common to all members), and define _columns() and
    _update()."""

    torch_class: type
    state_keys: tuple
    member_hyperparams: tuple
    shared: tuple

    def __init__(self, param: torch.Tensor, **hyperparams):
        if param.ndim < 2:
            raise ValueError("param must be stacked: [members, ...]")
        self.param = param
        self.size = param.shape[0]
        for name in self.member_hyperparams:
            values = [float(v) for v in hyperparams[name]]
            _check(len(values) == self.size, f"{name}: {len(values)} values for {self.size} members")
            setattr(self, name, torch.tensor(values, dtype=torch.float64, device=param.device))
        for name in self.shared:
            setattr(self, name, hyperparams[name])
        self.base_lr = self.lr.clone()
        self.step_count = torch.zeros(self.size, dtype=torch.float64, device=param.device)  # per member
        self.state = {key: torch.zeros_like(param, memory_format=torch.contiguous_format) for key in self.state_keys}

    @torch.no_grad()
    def keep_(self, rows: list[int], param: torch.Tensor) -> None:
        """Keep only the members in `rows`, whose parameters are now `param` (Population.keep_'s flat)."""
        self.param, self.size = param, len(rows)
        for name in (*self.member_hyperparams, "base_lr", "step_count"):
            setattr(self, name, getattr(self, name)[rows])
        self.state = {key: tensor[rows] for key, tensor in self.state.items()}

    def _col(self, v: torch.Tensor) -> torch.Tensor:
        """An [M] vector as an [M, 1, ...] column in the parameter's dtype (broadcasts over a member's row)."""
        return v.to(self.param.dtype).view(-1, *([1] * (self.param.ndim - 1)))

    def set_lr_factor(self, factor: float) -> None:
        """lr = base_lr * factor for every member (the engine's warm-up: group['lr'] = cfg.lr * factor)."""
        torch.mul(self.base_lr, factor, out=self.lr)

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One update of the members with active[i] (default: all) from param.grad; no host sync."""
        grad = self.param.grad
        if grad is None:
            return
        if active is None:
            active = torch.ones(self.size, dtype=torch.bool, device=self.param.device)
        self.step_count.add_(active.to(self.step_count.dtype))  # torch counts before the update
        self.apply(grad, self._col(active).bool(), self._columns())

    def apply(self, grad: torch.Tensor, keep: torch.Tensor, columns: dict[str, torch.Tensor]) -> None:
        """The elementwise update of the rows where `keep` [M, 1, ...] is True: what the engine compiles.
        The per-member scalars come in as computed columns: inside one compiled function torch.compile
        would fuse their float64 arithmetic (the bias corrections' powers) into the update's kernel and
        redo it for every element."""
        new = self._update(grad, columns)
        for key, tensor in [("param", self.param), *self.state.items()]:
            tensor.copy_(torch.where(keep, new[key], tensor))

    def _columns(self) -> dict[str, torch.Tensor]:
        """This step's per-member scalars, computed from the float64 [M] vectors, as _col columns."""
        raise NotImplementedError

    def _update(self, grad: torch.Tensor, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every member's new parameters and state, out of place ({'param': ..., state key: ...})."""
        raise NotImplementedError

    # ---- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The stacked state: hyperparameters, step counts and state tensors (references, as torch.optim)."""
        hyper = {name: getattr(self, name) for name in self.member_hyperparams}
        return {"hyperparams": {**hyper, "base_lr": self.base_lr, **{n: getattr(self, n) for n in self.shared}},
                "step_count": self.step_count, "state": dict(self.state)}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        hp = state_dict["hyperparams"]
        for name in self.shared:
            _check(hp[name] == getattr(self, name),
                   f"state_dict has {name}={hp[name]}, this optimizer {getattr(self, name)}")
        for name in (*self.member_hyperparams, "base_lr"):
            getattr(self, name).copy_(hp[name])
        self.step_count.copy_(state_dict["step_count"])
        for key, tensor in self.state.items():
            tensor.copy_(state_dict["state"][key])

    def _member_kwargs(self, i: int) -> dict:
        """Member i's hyperparameters as the torch.optim constructor's keyword arguments."""
        raise NotImplementedError

    def _member_entry(self, i: int, rows: dict[str, torch.Tensor]) -> dict:
        """torch.optim's state of one parameter of member i, from its rows of the state tensors."""
        raise NotImplementedError

    @torch.no_grad()
    def member_state_dict(self, i: int, layout: Layout, group_options: dict | None = None) -> dict:
        """Member i's state as torch_class(model.parameters(), **its hyperparameters).state_dict() after
        the same updates: parameters indexed 0.. in `layout` order, tensors copied. The param group is
        torch's default one for those hyperparameters updated with `group_options` (e.g. {'fused': True}:
        torch's load_state_dict adopts the saved group's flags, so pass the solo optimizer's own)."""
        dummies = [torch.empty(0) for _ in layout.names]
        group = self.torch_class(dummies, **self._member_kwargs(i)).state_dict()["param_groups"][0]
        group.update(group_options or {})
        state = {}
        if self.step_count[i] > 0:
            per_key = {key: layout.split(tensor[i]) for key, tensor in self.state.items()}
            for index, name in enumerate(layout.names):
                entry = self._member_entry(i, {key: rows[name] for key, rows in per_key.items()})
                if entry:
                    state[index] = entry
        return {"state": state, "param_groups": [group]}

    def _load_member(self, i: int, group: dict, entries: list[dict | None], layout: Layout) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def load_member_state_dicts(self, states: Sequence[dict], layout: Layout) -> None:
        """Stack M torch.optim-shaped state dicts (member_state_dict's, or a solo run's optimizer's) into
        this optimizer, adopting each member's hyperparameters from its param group (as torch's
        load_state_dict); lr sets the current lr, base_lr stays the constructor's."""
        _check(len(states) == self.size, f"{len(states)} state dicts for {self.size} members")
        for i, sd in enumerate(states):
            groups = sd["param_groups"]
            _check(len(groups) == 1 and len(groups[0]["params"]) == len(layout.names),
                   f"member {i}: expected one param group of {len(layout.names)} parameters")
            entries = [sd["state"].get(index) for index in groups[0]["params"]]
            _check(all(e for e in entries) or not any(entries), f"member {i}: state for only some parameters")
            self._load_member(i, groups[0], entries if entries and entries[0] else [], layout)

    def _set_member_rows(self, i: int, key: str, tensors: list[torch.Tensor], layout: Layout) -> None:
        """Row i of state tensor `key` from per-parameter tensors (zeros when `tensors` is empty)."""
        row = self.state[key][i]
        if not tensors:
            row.zero_()
        else:
            row.copy_(layout.join(dict(zip(layout.names, tensors))).to(device=row.device, dtype=row.dtype))


class StackedAdam(_StackedOptimizer):
    """Per-member Adam (decoupled_weight_decay=False) or AdamW (True) over param [M, ...].

    Args: lr, weight_decay: one float per member; betas: one (beta1, beta2) per member; eps: shared.
    State: 'exp_avg', 'exp_avg_sq' (param's shape) and step_count [M] (float64)."""

    state_keys = ("exp_avg", "exp_avg_sq")
    member_hyperparams = ("lr", "weight_decay", "beta1", "beta2")
    shared = ("eps", "decoupled_weight_decay")

    def __init__(self, param: torch.Tensor, lr: Sequence[float], betas: Sequence[tuple[float, float]],
                 weight_decay: Sequence[float], eps: float = 1e-8, decoupled_weight_decay: bool = False):
        betas = list(betas)
        for i, (value, (b1, b2), wd) in enumerate(zip(lr, betas, weight_decay)):
            _check(0.0 <= value and math.isfinite(value), f"Invalid learning rate of member {i}: {value}")
            _check(0.0 <= b1 < 1.0, f"Invalid beta parameter at index 0 of member {i}: {b1}")
            _check(0.0 <= b2 < 1.0, f"Invalid beta parameter at index 1 of member {i}: {b2}")
            _check(0.0 <= wd, f"Invalid weight_decay value of member {i}: {wd}")
        _check(0.0 <= eps, f"Invalid epsilon value: {eps}")
        super().__init__(param, lr=lr, weight_decay=weight_decay, beta1=[b1 for b1, _ in betas],
                         beta2=[b2 for _, b2 in betas], eps=float(eps),
                         decoupled_weight_decay=bool(decoupled_weight_decay))
        self.torch_class = torch.optim.AdamW if self.decoupled_weight_decay else torch.optim.Adam

    def _columns(self) -> dict[str, torch.Tensor]:
        col = self._col
        bias_correction1 = 1 - self.beta1 ** self.step_count
        bias_correction2 = 1 - self.beta2 ** self.step_count
        # AdamW's factor, torch's param.mul_(1 - lr * weight_decay); Adam's, grad.add(param, alpha=weight_decay)
        decay = 1 - self.lr * self.weight_decay if self.decoupled_weight_decay else self.weight_decay
        return {"decay": col(decay), "one_minus_beta1": col(1 - self.beta1), "beta2": col(self.beta2),
                "one_minus_beta2": col(1 - self.beta2), "sqrt_bias_correction2": col(bias_correction2.sqrt()),
                "step_size": col(-self.lr / bias_correction1)}

    def _update(self, grad: torch.Tensor, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.param
        if self.decoupled_weight_decay:
            p = p * c["decay"]
        else:
            grad = torch.addcmul(grad, p, c["decay"])
        exp_avg = torch.lerp(self.state["exp_avg"], grad, c["one_minus_beta1"])
        # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq = torch.addcmul(self.state["exp_avg_sq"] * c["beta2"], grad * c["one_minus_beta2"], grad)
        denom = (exp_avg_sq.sqrt() / c["sqrt_bias_correction2"]).add_(self.eps)
        # torch: param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        p = torch.addcdiv(p, c["step_size"] * exp_avg, denom)
        return {"param": p, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    def _member_kwargs(self, i: int) -> dict:
        return {"lr": float(self.lr[i]), "betas": (float(self.beta1[i]), float(self.beta2[i])),
                "weight_decay": float(self.weight_decay[i]), "eps": self.eps}

    def _member_entry(self, i: int, rows: dict[str, torch.Tensor]) -> dict:
        # torch keeps a non-capturable step as a float32 CPU scalar
        return {"step": torch.tensor(float(self.step_count[i]), dtype=torch.float32),
                **{key: row.clone() for key, row in rows.items()}}

    def _load_member(self, i: int, group: dict, entries: list[dict], layout: Layout) -> None:
        _check(group["eps"] == self.eps, f"member {i}: eps {group['eps']} differs from the population's {self.eps}")
        _check(not group.get("amsgrad") and not group.get("maximize"), f"member {i}: amsgrad/maximize unsupported")
        self.lr[i], self.weight_decay[i] = group["lr"], group["weight_decay"]
        self.beta1[i], self.beta2[i] = group["betas"]
        self.step_count[i] = float(entries[0]["step"]) if entries else 0.0
        for key in self.state_keys:
            self._set_member_rows(i, key, [e[key] for e in entries], layout)


class StackedSGD(_StackedOptimizer):
    """Per-member SGD with momentum (dampening 0; Nesterov shared) over param [M, ...].

    Args: lr, momentum, weight_decay: one float per member; nesterov: shared (every member then needs
    momentum > 0, as torch requires). State: 'momentum_buffer' (param's shape) and step_count [M],
    used only to seed a member's buffer with its first gradient."""

    state_keys = ("momentum_buffer",)
    member_hyperparams = ("lr", "momentum", "weight_decay")
    shared = ("nesterov",)
    torch_class = torch.optim.SGD

    def __init__(self, param: torch.Tensor, lr: Sequence[float], momentum: Sequence[float],
                 weight_decay: Sequence[float], nesterov: bool = False):
        for i, (value, mom, wd) in enumerate(zip(lr, momentum, weight_decay)):
            _check(0.0 <= value and math.isfinite(value), f"Invalid learning rate of member {i}: {value}")
            _check(0.0 <= mom, f"Invalid momentum value of member {i}: {mom}")
            _check(0.0 <= wd, f"Invalid weight_decay value of member {i}: {wd}")
            _check(not nesterov or mom > 0, f"Nesterov momentum requires a momentum (member {i})")
        super().__init__(param, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=bool(nesterov))

    def _columns(self) -> dict[str, torch.Tensor]:
        col = self._col
        return {"weight_decay": col(self.weight_decay), "momentum": col(self.momentum),
                "first": col(self.step_count == 1).bool(), "neg_lr": col(-self.lr)}

    def _update(self, grad: torch.Tensor, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p, momentum = self.param, c["momentum"]
        grad = torch.addcmul(grad, p, c["weight_decay"])  # torch: grad.add(param, alpha=weight_decay)
        # torch: buf = grad.clone() when the member has none
        buf = torch.where(c["first"], grad, self.state["momentum_buffer"] * momentum + grad)
        direction = torch.addcmul(grad, buf, momentum) if self.nesterov else buf
        return {"param": torch.addcmul(p, direction, c["neg_lr"]), "momentum_buffer": buf}

    def _member_kwargs(self, i: int) -> dict:
        return {"lr": float(self.lr[i]), "momentum": float(self.momentum[i]),
                "weight_decay": float(self.weight_decay[i]), "nesterov": self.nesterov}

    def _member_entry(self, i: int, rows: dict[str, torch.Tensor]) -> dict:
        # torch keeps no buffer for momentum 0
        return {"momentum_buffer": rows["momentum_buffer"].clone()} if self.momentum[i] != 0 else {}

    def _load_member(self, i: int, group: dict, entries: list[dict], layout: Layout) -> None:
        _check(bool(group["nesterov"]) == self.nesterov, f"member {i}: nesterov differs from the population's")
        _check(group.get("dampening", 0) == 0 and not group.get("maximize"),
               f"member {i}: dampening/maximize unsupported")
        self.lr[i], self.momentum[i], self.weight_decay[i] = group["lr"], group["momentum"], group["weight_decay"]
        buffers = [e.get("momentum_buffer") for e in entries]
        seeded = bool(buffers) and all(b is not None for b in buffers)
        # torch's SGD state has no step count: a member with a buffer has stepped (exactly how often
        # does not matter to SGD); one without has not, or has momentum 0 (then the buffer is unused)
        self.step_count[i] = 1.0 if seeded else 0.0
        self._set_member_rows(i, "momentum_buffer", buffers if seeded else [], layout)


def make_stacked_optimizer(cfgs: Sequence, param: torch.Tensor) -> StackedAdam | StackedSGD:
    """The population's optimizer from its members' configs, as the engine's make_optimizer builds a
    solo run's (torch's default eps). The optimizer class and SGD's Nesterov switch are shared."""
    names = {cfg.optimizer for cfg in cfgs}
    _check(len(names) == 1, f"population members use different optimizers: {sorted(names)}")
    lr, weight_decay = [cfg.lr for cfg in cfgs], [cfg.weight_decay for cfg in cfgs]
    if names == {"SGD"}:
        nesterov = {cfg.nesterov for cfg in cfgs}
        _check(len(nesterov) == 1, "population members differ in nesterov")
        return StackedSGD(param, lr=lr, momentum=[cfg.momentum for cfg in cfgs], weight_decay=weight_decay,
                          nesterov=nesterov.pop())
    return StackedAdam(param, lr=lr, betas=[(cfg.beta1, cfg.beta2) for cfg in cfgs], weight_decay=weight_decay,
                       decoupled_weight_decay=names == {"AdamW"})
