"""A per-member Grokfast filter over a population's stacked gradients (param.grad, [M, ...]).

Member i follows grokfast.GradFilter's conventions with its own alpha_i and lamb_i:
    EMA: h = alpha_i*h + (1-alpha_i)*g (as h.lerp(g, 1-alpha_i)), h seeded with the member's first g,
         no bias correction; g += lamb_i*h. With highpass[i] (GradFilter's kind 'ema_highpass'), the same
         h, then g += lamb_i*(g - h), written torch.addcmul(g, g - h, lamb_i) (GradFilter: g.add_(g - h,
         alpha=lamb)). Low- and high-pass members share one stacked EMA state, so they stack together.
    MA:  the last w raw gradients (w shared) in a ring with a running sum (an exact re-sum each time
         the ring wraps); g += lamb_i*mean(window) ('mean', over the current length) or lamb_i*sum
         ('sum'); warmup=True applies nothing until the window is full.
The state only ever sees raw gradients. GradFilter's `g.add_(h, alpha=lamb)` is written
torch.addcmul(g, h, lamb), which rounds as it does on the x86 CPU tried (bitwise equal to GradFilter's
loop path there; tests/test_population_optim.py requires 1e-6).

`on[i]` False: member i has no filter (its solo run's filter 'none'): its gradient is unchanged
(selected with torch.where, never multiplied by a zero lamb: 0 * inf is nan) and it has no state.
`step(active)`: inactive members keep their gradient and state unchanged. `enabled` (shared) as
GradFilter's: False records gradients but applies nothing (the reference's two-stage ablation).

MA's ring position is a Python int, the count of the population's steps: members that are active step
together, so they share it; a member made inactive keeps its own (smaller) count in `counts` and never
steps again. Members stacked from ordinary states must therefore either have the largest count among
them or stay inactive.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from repro.population import Layout, filter_kinds

KINDS = ("ema", "ma")
FILTER_TYPES = ("mean", "sum")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class StackedGradFilter:
    """Per-member Grokfast filter; step() filters param.grad [M, ...] in place.

    Args:
        param: the stacked parameters [M, ...] whose .grad is filtered.
        kind: 'ema' or 'ma' (shared).
        alpha, lamb: one float per member (alpha is EMA's decay, 0 <= alpha < 1; lamb finite).
        on: one bool per member: False = no filter for that member.
        highpass: EMA only, one bool per member (default all False): True = the member's kind is
            'ema_highpass' (g += lamb*(g - h) instead of g += lamb*h).
        window_size, filter_type, warmup: MA settings, shared (GradFilter's defaults).
        enabled: as GradFilter's, shared; settable at any time.

    State: counts [M] (int64: each member's recorded gradients; for EMA only whether it is seeded
    matters); EMA 'ema' (param's shape); MA 'ring' [w, *param.shape], 'sum' (param's shape) and the
    population's step count `count` (Python int)."""

    def __init__(self, param: torch.Tensor, kind: str = "ema", *, alpha: Sequence[float], lamb: Sequence[float],
                 on: Sequence[bool], window_size: int = 100, filter_type: str = "mean", warmup: bool = True,
                 enabled: bool = True, highpass: Sequence[bool] | None = None):
        size = param.shape[0]
        highpass = [False] * size if highpass is None else list(highpass)
        _check(param.ndim >= 2, "param must be stacked: [members, ...]")
        _check(kind in KINDS, f"Invalid kind value: {kind!r} (expected 'ema' or 'ma')")
        _check(len(alpha) == len(lamb) == len(on) == len(highpass) == size,
               f"alpha, lamb, on and highpass need one value per member ({size})")
        _check(kind == "ema" or not any(highpass), "highpass needs kind 'ema'")
        for i, (a, lam) in enumerate(zip(alpha, lamb)):
            _check(0.0 <= a < 1.0, f"Invalid alpha value of member {i}: {a}")
            _check(math.isfinite(lam), f"Invalid lamb value of member {i}: {lam}")
        _check(not isinstance(window_size, bool) and isinstance(window_size, int) and window_size >= 1,
               f"Invalid window_size value: {window_size}")
        _check(filter_type in FILTER_TYPES, f"Invalid filter_type value: {filter_type!r} (expected 'mean' or 'sum')")
        device = param.device
        self.param, self.kind, self.size = param, kind, size
        self.alpha = torch.tensor([float(a) for a in alpha], dtype=torch.float64, device=device)
        self.lamb = torch.tensor([float(lam) for lam in lamb], dtype=torch.float64, device=device)
        self.on = torch.tensor([bool(o) for o in on], dtype=torch.bool, device=device)
        self.highpass = torch.tensor([bool(x) for x in highpass], dtype=torch.bool, device=device)
        self._any_highpass = any(highpass)  # a Python bool: step() never syncs on it
        self.window_size, self.filter_type = window_size, filter_type
        self.warmup, self.enabled = bool(warmup), bool(enabled)
        self.counts = torch.zeros(size, dtype=torch.int64, device=device)
        self.count = 0  # MA: the active members' count, which sets the ring position
        zeros = torch.zeros_like(param, memory_format=torch.contiguous_format)
        if kind == "ema":
            self.state = {"ema": zeros}
        else:
            self.state = {"ring": zeros.new_zeros((window_size, *param.shape)), "sum": zeros}

    @torch.no_grad()
    def keep_(self, rows: list[int], param: torch.Tensor) -> None:
        """Keep only the members in `rows`, whose parameters are now `param` (Population.keep_'s flat)."""
        self.param, self.size = param, len(rows)
        for name in ("alpha", "lamb", "on", "highpass", "counts"):
            setattr(self, name, getattr(self, name)[rows])
        self._any_highpass = bool(self.highpass.any())
        self.state = {key: tensor[:, rows] if key == "ring" else tensor[rows] for key, tensor in self.state.items()}

    def _col(self, v: torch.Tensor) -> torch.Tensor:
        """An [M] vector as an [M, 1, ...] column (in the parameter's dtype unless bool)."""
        v = v if v.dtype == torch.bool else v.to(self.param.dtype)
        return v.view(-1, *([1] * (self.param.ndim - 1)))

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """Filter param.grad in place for the members with active[i] (default: all) and on[i]."""
        grad = self.param.grad
        if grad is None:
            return
        stepping = self.on if active is None else self.on & active
        if self.kind == "ema":
            amplified = self._ema(grad, self._col(stepping))
        else:
            amplified = self._ma(grad, self._col(stepping))
        self.counts.add_(stepping.long())
        if amplified is not None:
            grad.copy_(torch.where(self._col(stepping), amplified, grad))

    def _ema(self, grad: torch.Tensor, stepping: torch.Tensor) -> torch.Tensor | None:
        h = self.state["ema"]
        seeded = torch.where(self._col(self.counts == 0), grad, h)  # GradFilter: h = g.clone(), then the lerp
        h_new = torch.lerp(seeded, grad, self._col(1 - self.alpha))  # lerp(g, g, w) == g: the first h is g
        h.copy_(torch.where(stepping, h_new, h))
        if not self.enabled:
            return None
        low = torch.addcmul(grad, h_new, self._col(self.lamb))  # GradFilter: g.add_(h, alpha=lamb)
        if not self._any_highpass:
            return low
        high = torch.addcmul(grad, grad - h_new, self._col(self.lamb))  # GradFilter: g.add_(g - h, alpha=lamb)
        return torch.where(self._col(self.highpass), high, low)

    def _ma(self, grad: torch.Tensor, stepping: torch.Tensor) -> torch.Tensor | None:
        ring, total, w = self.state["ring"], self.state["sum"], self.window_size
        slot = ring[self.count % w]
        new_total = (total - slot) + grad  # GradFilter: sum -= evicted; slot = g; sum += slot
        slot.copy_(torch.where(stepping, grad, slot))
        n = self.count = self.count + 1
        if n % w == 0:  # the ring wrapped: an exact re-sum bounds the running sum's drift
            new_total = ring.sum(0)
        total.copy_(torch.where(stepping, new_total, total))
        if not self.enabled or (self.warmup and n < w):
            return None
        scale = self.lamb / min(n, w) if self.filter_type == "mean" else self.lamb
        return torch.addcmul(grad, total, self._col(scale))  # GradFilter: g.add_(sum, alpha=scale)

    # ---- checkpointing --------------------------------------------------------------------------
    def _hyperparams(self) -> dict:
        return dict(kind=self.kind, window_size=self.window_size, filter_type=self.filter_type, warmup=self.warmup,
                    enabled=self.enabled)

    def state_dict(self) -> dict:
        """The stacked state (tensors are references, as torch.optim)."""
        return {"hyperparams": {**self._hyperparams(), "alpha": self.alpha, "lamb": self.lamb, "on": self.on,
                                "highpass": self.highpass},
                "counts": self.counts, "count": self.count, "state": dict(self.state)}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        hp = state_dict["hyperparams"]
        for name in ("kind", "window_size"):
            _check(hp[name] == getattr(self, name),
                   f"state_dict has {name}={hp[name]!r}, this filter {getattr(self, name)!r}")
        self.filter_type, self.warmup, self.enabled = hp["filter_type"], hp["warmup"], hp["enabled"]
        for name in ("alpha", "lamb", "on", "counts"):
            getattr(self, name).copy_(hp[name] if name in hp else state_dict[name])
        if "highpass" in hp:  # older state dicts: all low-pass
            self.highpass.copy_(hp["highpass"])
        else:
            self.highpass.zero_()
        self._any_highpass = bool(self.highpass.any())
        self.count = int(state_dict["count"])
        for key, tensor in self.state.items():
            tensor.copy_(state_dict["state"][key])

    @torch.no_grad()
    def member_state_dict(self, i: int, layout: Layout) -> dict | None:
        """Member i's filter as GradFilter(model, ...).state_dict() after the same steps (state keyed by
        parameter name, tensors copied), or None for a member without a filter (as the engine saves)."""
        if not self.on[i]:
            return None
        hyperparams = {**self._hyperparams(), "alpha": float(self.alpha[i]), "lamb": float(self.lamb[i])}
        if self.highpass[i]:
            hyperparams["kind"] = "ema_highpass"
        count = int(self.counts[i])
        state = {}
        if count and self.kind == "ema":
            state = {name: {"ema": h.clone()} for name, h in layout.split(self.state["ema"][i]).items()}
        elif count:
            windows = layout.split(self.state["ring"][:, i])
            sums = layout.split(self.state["sum"][i])
            state = {name: {"count": count, "window": windows[name].clone(), "sum": sums[name].clone()}
                     for name in layout.names}
        return {"hyperparams": hyperparams, "state": state}

    @torch.no_grad()
    def load_member_state_dicts(self, states: Sequence[dict | None], layout: Layout) -> None:
        """Stack M GradFilter state dicts (None for a member without a filter) into this filter, adopting
        each member's alpha and lamb (kind, window_size, filter_type, warmup and enabled must agree).
        MA: the ring position becomes the largest member count (see the module docstring)."""
        _check(len(states) == self.size, f"{len(states)} filter states for {self.size} members")
        for i, sd in enumerate(states):
            problem = "missing" if sd is None else "given for a member without a filter"
            _check((sd is not None) == bool(self.on[i]), f"member {i}: filter state {problem}")
            if sd is None:
                continue
            hp = sd["hyperparams"]
            for name, value in self._hyperparams().items():
                value = "ema_highpass" if name == "kind" and self.highpass[i] else value
                _check(hp[name] == value, f"member {i}: filter {name} {hp[name]!r}, the population's {value!r}")
            self.alpha[i], self.lamb[i] = hp["alpha"], hp["lamb"]
            self._load_member(i, sd["state"], layout)
        self.count = int(self.counts.max()) if self.kind == "ma" else 0

    def _load_member(self, i: int, state: dict, layout: Layout) -> None:
        if not state:
            self.counts[i] = 0
            for tensor in self.state.values():
                (tensor[:, i] if tensor.ndim > self.param.ndim else tensor[i]).zero_()
            return
        _check(set(state) == set(layout.names), f"member {i}: filter state for other parameters")
        if self.kind == "ema":
            self.counts[i] = 1  # seeded; GradFilter's EMA state does not count its steps
            self.state["ema"][i].copy_(layout.join({n: st["ema"] for n, st in state.items()}))
            return
        counts = {st["count"] for st in state.values()}
        _check(len(counts) == 1, f"member {i}: filter state with different counts per parameter")
        self.counts[i] = counts.pop()
        windows = {n: st["window"].reshape(self.window_size, -1) for n, st in state.items()}
        self.state["ring"][:, i].copy_(torch.cat([windows[n] for n in layout.names], dim=1))
        self.state["sum"][i].copy_(layout.join({n: st["sum"] for n, st in state.items()}))


def make_stacked_filter(cfgs: Sequence, param: torch.Tensor) -> StackedGradFilter | None:
    """The population's filter from its members' configs, as the engine's make_filter builds a solo
    run's; None when no member has one. Members with filter 'none' are off; 'ema' and 'ema_highpass'
    members stack (one EMA state, a per-member high-pass switch)."""
    on = [cfg.filter != "none" for cfg in cfgs]
    if not any(on):
        return None
    kinds = filter_kinds(cfgs)
    _check(len(kinds) == 1, f"population members mix filter kinds {sorted(kinds)}")
    shared = {(cfg.window_size, cfg.filter_type) for cfg, o in zip(cfgs, on) if o}
    _check(len(shared) == 1, "population members with a filter differ in window_size or filter_type")
    (window_size, filter_type), = shared
    return StackedGradFilter(param, kinds.pop(), alpha=[cfg.alpha for cfg in cfgs], lamb=[cfg.lamb for cfg in cfgs],
                             on=on, window_size=window_size, filter_type=filter_type,
                             highpass=[cfg.filter == "ema_highpass" for cfg in cfgs])
