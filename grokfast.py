"""Grokfast gradient filters: amplify the slow component of each parameter's gradient sequence.

Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv 2405.20233).
Depends on torch only.

Conventions (per parameter, g = its raw gradient this step):
    EMA: h = alpha*h + (1-alpha)*g, h seeded with a copy of the first g, no bias correction; g += lamb*h.
    EMA high-pass (kind='ema_highpass', not in the paper; GradFilter only): the same h, then
         g += lamb*(g - h), i.e. g_hat = g + lamb*(g - EMA_alpha(g)): the fast part amplified, the mirror
         of Grokfast's low-pass g + lamb*EMA_alpha(g) (issue 21 Q5: do slow gradients matter?). Its
         first step leaves g unchanged (h == g there). In frequency terms (gradients as a sequence in
         t, z = e^{i*omega}): EMA's transfer is (1-alpha)/(1-alpha*z^-1), so low-pass gives
         1 + lamb*EMA (gain 1+lamb at omega=0, ~1 at high frequency) and high-pass 1 + lamb*(1-EMA)
         (gain 1 at omega=0, up to ~1+lamb at high frequency); the crossover is near the EMA's
         cut-off omega_c = (1-alpha) rad/step, i.e. (1-alpha)/(2*pi) cycles per step.
    MA:  window = the last w raw gradients; g += lamb*mean(window) ('mean', divided by the current
         window length) or lamb*sum(window) ('sum'); warmup=True applies nothing until the window is full.
The state only ever sees raw gradients, never the amplified ones. Parameters with
requires_grad=False or grad None are skipped; they get state at their first gradient.

Two APIs:
    gradfilter_ema / gradfilter_ma: call-compatible with the reference (ironjr/grokfast), e.g.
        grads = None
        ...; loss.backward(); grads = gradfilter_ema(model, grads=grads, alpha=0.98, lamb=2.0); opt.step()
    GradFilter: a stateful filter object (loop and torch._foreach_* paths, O(1)-per-step MA,
        state_dict / load_state_dict, attach(optimizer)). Use it in new code.

Differences from the reference, all deliberate:
    - EMA state starts as a copy of the first gradient (the reference aliases p.grad).
    - EMA is computed as h.lerp_(g, 1-alpha) (as torch.optim.Adam's exp_avg): the same formula, one
      kernel, with the first step exactly h = g; results differ from alpha*h + (1-alpha)*g by rounding.
    - MA keeps a running sum (add the newest, subtract the evicted) instead of re-summing the window
      every step; an exact re-sum every w steps (when the ring wraps) bounds the floating-point drift
      to w steps' worth, so results stay within fp32 rounding of a full re-sum. Amortised O(1).
    - trigger=True (GradFilter: enabled=False) always disables applying the filter; the window/EMA still
      records the gradient. The reference's `not warmup or len == w and not trigger` ignores trigger
      when warmup=False.
    - Gradients are filtered in place (the reference rebinds p.grad.data to a new tensor).

Correct placement in real training (GradFilter.attach(optimizer) gets all of these right):
    - Clipping: clip first, then filter (the paper's IMDb order). With attach(), clip before
      optimizer.step() as usual; the filter runs at the start of optimizer.step().
    - Gradient accumulation: filter once per optimizer step, on the accumulated gradient, not per
      micro-batch. attach() does this by construction.
    - AMP GradScaler: the filter must see unscaled gradients (reference issue #10). Manually:
      scaler.scale(loss).backward(); scaler.unscale_(opt); [clip]; filter.step(); scaler.step(opt).
      With attach(), scaler.step(opt) unscales before calling opt.step(), so the pre-hook sees
      unscaled gradients; when the scaler skips a step with inf/nan gradients, opt.step() is not
      called, so the hook does not run and the filter state is not polluted.
    - No host synchronisation in step(): no .item(), no branching on tensor values, safe in a tight
      GPU loop. The EMA step, once its state exists, is two foreach kernels per device/dtype group and
      can be captured in a CUDA graph (the high-pass step three, equally capturable); MA's ring position
      is a Python int, so a captured MA graph would replay a single slot (not supported).
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from typing import Iterable

import torch
from torch import nn

__all__ = ["GradFilter", "gradfilter_ema", "gradfilter_ma"]

try:  # the devices torch.optim defaults to foreach on
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices as _foreach_devices
except ImportError:  # pragma: no cover - older torch
    def _foreach_devices():
        return ["cuda"]


KINDS = ("ema", "ema_highpass", "ma")


def _validate(kind="ema", alpha=0.0, lamb=0.0, window_size=1, filter_type="mean"):
    if kind not in KINDS:
        raise ValueError(f"Invalid kind value: {kind!r} (expected 'ema', 'ema_highpass' or 'ma')")
    if not (isinstance(alpha, numbers.Real) and 0.0 <= alpha < 1.0):
        raise ValueError(f"Invalid alpha value: {alpha}")
    if not (isinstance(lamb, numbers.Real) and math.isfinite(lamb)):
        raise ValueError(f"Invalid lamb value: {lamb}")
    if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size < 1:
        raise ValueError(f"Invalid window_size value: {window_size}")
    if filter_type not in ("mean", "sum"):
        raise ValueError(f"Invalid filter_type value: {filter_type!r} (expected 'mean' or 'sum')")


def _default_foreach(tensors) -> bool:
    """torch.optim's default: foreach when every tensor is on a device with foreach kernels (CUDA)."""
    devices = _foreach_devices()
    return all(t.device.type in devices for t in tensors)


def _groups(items, foreach: bool):
    """(key, grad) pairs split by device and dtype, as foreach kernels need; one group for the loop."""
    if not foreach:
        return [items]
    out = {}
    for item in items:
        out.setdefault((item[1].device, item[1].dtype), []).append(item)
    return out.values()


def _ema_(hs, gs, alpha: float, lamb: float, apply: bool, foreach: bool, highpass: bool = False) -> None:
    """In place: h = alpha*h + (1-alpha)*g (as lerp); then, if apply, g += lamb*h (low-pass, Grokfast)
    or, with highpass, g += lamb*(g - h) (g - h formed first, then added: no (1+lamb)*g - lamb*h
    cancellation). For foreach, the tensors must share one device and dtype."""
    if foreach:
        torch._foreach_lerp_(hs, gs, 1.0 - alpha)
        if apply and highpass:
            torch._foreach_add_(gs, torch._foreach_sub(gs, hs), alpha=lamb)
        elif apply:
            torch._foreach_add_(gs, hs, alpha=lamb)
    else:
        for g, h in zip(gs, hs):
            h.lerp_(g, 1.0 - alpha)
            if apply and highpass:
                g.add_(g - h, alpha=lamb)
            elif apply:
                g.add_(h, alpha=lamb)


def _trainable_grads(named):
    return [(k, p.grad) for k, p in named if p.requires_grad and p.grad is not None]


def _check_dense(g):
    if g.is_sparse:
        raise RuntimeError("Grokfast filters do not support sparse gradients")


# --------------------------------------------------------------------------- reference-compatible API


@torch.no_grad()
def gradfilter_ema(m: nn.Module, grads: dict | None = None, alpha: float = 0.98, lamb: float = 2.0) -> dict:
    """h = alpha*h + (1-alpha)*g, seeded with (a copy of) the first g, no bias correction; g += lamb*h.

    Filters every p.grad of `m` in place. `grads` is the state returned by the previous call (None at
    first): a dict parameter name -> EMA tensor, as in the reference. Returns it.
    """
    _validate("ema", alpha=alpha, lamb=lamb)
    grads = {} if grads is None else grads
    items = _trainable_grads(m.named_parameters())
    foreach = _default_foreach([g for _, g in items])
    for group in _groups(items, foreach):
        for name, g in group:
            _check_dense(g)
            if name not in grads:
                grads[name] = g.clone()  # a copy: the reference aliases p.grad here
        _ema_([grads[name] for name, _ in group], [g for _, g in group], float(alpha), float(lamb), True, foreach)
    return grads


class _MAWindows(dict):
    """name -> deque of the last w raw gradients (as the reference), plus hidden running sums."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}


def _resum_(s: torch.Tensor, window) -> torch.Tensor:
    """s = sum(window), summed in the reference's order, without a stacked temporary."""
    s.zero_()
    for t in window:
        s.add_(t)
    return s


@torch.no_grad()
def gradfilter_ma(
    m: nn.Module,
    grads: dict | None = None,
    window_size: int = 100,
    lamb: float = 5.0,
    filter_type: str = "mean",
    warmup: bool = True,
    trigger: bool = False,
) -> dict:
    """g += lamb*mean(last w raw g) ('mean', over the current length) or lamb*sum(...) ('sum').

    With warmup=True nothing is applied until the window holds `window_size` gradients. trigger=True
    disables applying in all cases (the reference ignores trigger when warmup=False); the window
    still records the gradient. `grads` is the state returned by the previous call (None at first):
    a dict where grads[name] is a deque (maxlen w) of gradient copies, as in the reference. It also
    carries running sums, so each call costs O(1) in w (exact re-sum every w calls; see the module
    docstring). For many parameters on a GPU, GradFilter(kind='ma') is faster (foreach kernels).
    """
    _validate("ma", lamb=lamb, window_size=window_size, filter_type=filter_type)
    if not isinstance(grads, _MAWindows):
        grads = _MAWindows(grads or {})
    for name, g in _trainable_grads(m.named_parameters()):
        _check_dense(g)
        window = grads.get(name)
        if window is None:
            window = grads[name] = deque(maxlen=window_size)
        s = grads.sums.get(name)
        if s is None:  # a window built elsewhere (or new): sum it once
            s = grads.sums[name] = _resum_(torch.zeros_like(g), window)
        if len(window) == window.maxlen:
            s.sub_(window[0])  # evicted by the append below
        window.append(g.clone())  # a copy: never alias p.grad
        s.add_(g)
        count = grads.counts[name] = grads.counts.get(name, 0) + 1
        if count % window_size == 0:
            _resum_(s, window)  # bounds the running sum's drift
        if not trigger and (not warmup or len(window) == window_size):
            g.add_(s, alpha=lamb / len(window) if filter_type == "mean" else lamb)
    return grads


# --------------------------------------------------------------------------- stateful filter


class _Group:
    """Parameters stepped together: their positions in the parameter list and their state. MA groups
    share a count and keep one (w, N) ring and one (N,) running sum for all their parameters (each
    parameter's 'window' and 'sum' are views into them), so the sum's update is two plain kernels."""

    def __init__(self, members: list, window_size: int):
        self.index = [i for i, _, _, _ in members]
        self.states = [st for _, _, st, _ in members]
        grads = [g for _, _, _, g in members]
        self.dtype = grads[0].dtype
        if "ema" in self.states[0]:
            self.emas = [st["ema"] for st in self.states]
        else:
            self._flatten_ma(grads, window_size)

    def _flatten_ma(self, grads: list, w: int) -> None:
        sizes = [g.numel() for g in grads]
        self.ring = grads[0].new_zeros((w, sum(sizes)))
        self.sum = grads[0].new_zeros(sum(sizes))
        self.count = self.states[0]["count"]
        offset = 0
        for st, g, size in zip(self.states, grads, sizes):
            window = self.ring[:, offset:offset + size].view(w, *g.shape)
            total = self.sum[offset:offset + size].view(g.shape)
            if "window" in st:  # state from before a regrouping, or loaded: carried over
                window.copy_(st["window"])
                total.copy_(st["sum"])
            st["window"], st["sum"] = window, total
            offset += size
        self.sums = [st["sum"] for st in self.states]
        self.rows = self.ring.unbind(0)  # cached: indexing costs ~1 us a call
        self.slots = [[st["window"][k] for st in self.states] for k in range(w)]


class _Plan:
    def __init__(self, present: list, foreach: bool, groups: list):
        self.present, self.foreach, self.groups = present, foreach, groups


class GradFilter:
    """Grokfast filter object for new code; `step()` filters the current .grads in place.

    kind='ema': h = alpha*h + (1-alpha)*g, seeded with a copy of the first g, no bias correction; g += lamb*h.
    kind='ema_highpass': the same h; g += lamb*(g - h) (amplifies the fast part; see the module docstring).
    kind='ma':  g += lamb*mean(last w raw g) ('mean', over the current length) or lamb*sum (...) ('sum');
                warmup=True applies nothing until the window is full.

    Args:
        params: an nn.Module (state keyed by parameter name) or an iterable of parameters (keyed by
            position).
        kind: 'ema', 'ema_highpass' or 'ma'.
        alpha: EMA decay, 0 <= alpha < 1 (reference default 0.98).
        lamb: amplification; None = the reference's default for `kind` (EMA 2.0, MA 5.0; high-pass 2.0).
        window_size, filter_type, warmup: MA settings (reference defaults 100, 'mean', True).
        foreach: True = torch._foreach_* kernels (grouped by device and dtype), False = a per-tensor
            loop, None = torch.optim's default (foreach when all gradients are on CUDA).
        enabled: False records gradients in the state but leaves them unchanged (the reference's
            trigger=True). Settable at any time: `filter.enabled = step >= 500`.

    State per parameter (see state_dict): EMA and EMA high-pass {'ema': tensor}; MA {'window': tensor (w, *shape),
    a ring buffer, 'sum': running sum of the window, 'count': gradients recorded so far; the next
    slot is count % w}. MA's 'window' and 'sum' are views into one ring and one sum shared by the
    parameters stepped together (same device, dtype and count); state_dict() returns those views.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        kind: str = "ema",
        *,
        alpha: float = 0.98,
        lamb: float | None = None,
        window_size: int = 100,
        filter_type: str = "mean",
        warmup: bool = True,
        foreach: bool | None = None,
        enabled: bool = True,
    ):
        if lamb is None:
            lamb = 5.0 if kind == "ma" else 2.0
        _validate(kind, alpha, lamb, window_size, filter_type)
        if isinstance(params, nn.Module):
            self._params = list(params.named_parameters())
        elif isinstance(params, torch.Tensor):
            raise TypeError("params must be an nn.Module or an iterable of tensors, not a tensor")
        else:
            self._params = list(enumerate(params))
        self.kind, self.alpha, self.lamb = kind, float(alpha), float(lamb)
        self.window_size, self.filter_type, self.warmup = int(window_size), filter_type, bool(warmup)
        self.foreach, self.enabled = foreach, bool(enabled)
        self.state: dict = {}
        self._handles: list = []
        self._plan: _Plan | None = None  # cached grouping of the parameters (see _make_plan)

    def __repr__(self) -> str:
        hp = f"alpha={self.alpha}" if self.kind != "ma" else (
            f"window_size={self.window_size}, filter_type={self.filter_type!r}, warmup={self.warmup}")
        return (f"GradFilter(kind={self.kind!r}, {hp}, lamb={self.lamb}, foreach={self.foreach}, "
                f"enabled={self.enabled}, params={len(self._params)})")

    @torch.no_grad()
    def step(self) -> None:
        """Filter the current gradients in place (call after backward/clipping, before optimizer.step)."""
        grads = [p.grad if p.requires_grad else None for _, p in self._params]
        present = [g is not None for g in grads]
        plan = self._plan
        if plan is None or plan.present != present or any(
                grads[group.index[0]].dtype != group.dtype for group in plan.groups):
            plan = self._plan = self._make_plan(grads, present)
        run = self._run_ma if self.kind == "ma" else self._run_ema
        for group in plan.groups:
            run(group, [grads[i] for i in group.index])

    def _make_plan(self, grads: list, present: list) -> "_Plan":
        """Group the parameters that have a gradient (by device and dtype for foreach; MA also by count,
        so a group shares its ring position) and create state for new ones. Rebuilt only when the set
        of gradients changes, so a step costs little more than its kernels."""
        items = [(i, self._params[i][0], grads[i]) for i in range(len(grads)) if present[i]]
        for _, _, g in items:
            _check_dense(g)
        foreach = self.foreach if self.foreach is not None else _default_foreach([g for *_, g in items])
        buckets: dict = {}
        for i, key, g in items:
            st = self.state.get(key)
            if st is None:  # MA: its window and sum are made by the group (views of the group's ring)
                st = self.state[key] = {"count": 0} if self.kind == "ma" else {"ema": g.clone()}
            # EMA state starts as a copy of g: the lerp then leaves h == g exactly
            bucket = (g.device, g.dtype) if foreach or self.kind == "ma" else ()
            buckets.setdefault(bucket + ((st["count"],) if self.kind == "ma" else ()), []).append((i, key, st, g))
        groups = [_Group(members, self.window_size) for members in buckets.values()]
        if self.kind == "ma":  # parameters without a gradient now: own copies, so no old ring stays alive
            grouped = {id(st) for members in buckets.values() for _, _, st, _ in members}
            for st in self.state.values():
                if id(st) not in grouped and "window" in st:
                    st["window"], st["sum"] = st["window"].clone(), st["sum"].clone()
        return _Plan(present, foreach, groups)

    def _run_ema(self, group: _Group, gs: list) -> None:
        _ema_(group.emas, gs, self.alpha, self.lamb, self.enabled, self._plan.foreach,
              highpass=self.kind == "ema_highpass")

    def _run_ma(self, group: _Group, gs: list) -> None:
        w, foreach = self.window_size, self._plan.foreach
        k = group.count % w
        evicted = group.rows[k]  # zeros while the window fills
        group.sum.sub_(evicted)  # sum += g - evicted; the slot takes g
        if foreach:
            torch._foreach_copy_(group.slots[k], gs)
        else:
            for slot, g in zip(group.slots[k], gs):
                slot.copy_(g)
        group.sum.add_(evicted)  # the same row, now holding g
        n = group.count = group.count + 1
        for st in group.states:
            st["count"] = n
        if n % w == 0:  # the ring wrapped: an exact re-sum bounds the running sum's drift
            torch.sum(group.ring, 0, out=group.sum)
        if self.enabled and (n >= w or not self.warmup):  # g += scale*sum
            scale = self.lamb / min(n, w) if self.filter_type == "mean" else self.lamb
            if foreach:
                torch._foreach_add_(gs, group.sums, alpha=scale)
            else:
                for g, s in zip(gs, group.sums):
                    g.add_(s, alpha=scale)

    # ----------------------------------------------------------------------- optimizer integration

    def attach(self, optimizer: torch.optim.Optimizer):
        """Run step() at the start of every optimizer.step() (a step pre-hook). Returns the handle."""
        handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.step())
        self._handles.append(handle)
        return handle

    def detach(self) -> None:
        """Remove every hook that attach() registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ----------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        """{'hyperparams': {...}, 'state': {key: per-parameter state}}; tensors are references (as
        torch.optim): torch.save it, or deepcopy it to snapshot."""
        hyperparams = dict(kind=self.kind, alpha=self.alpha, lamb=self.lamb, window_size=self.window_size,
                           filter_type=self.filter_type, warmup=self.warmup, enabled=self.enabled)
        return {"hyperparams": hyperparams, "state": {k: dict(st) for k, st in self.state.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters (kind and, for MA, window_size must match). Tensors are
        copied onto each parameter's device and dtype."""
        hp = dict(state_dict["hyperparams"])
        if hp["kind"] != self.kind or (self.kind == "ma" and hp["window_size"] != self.window_size):
            raise ValueError(f"state_dict is for kind={hp['kind']!r}, window_size={hp['window_size']}; "
                             f"this filter has kind={self.kind!r}, window_size={self.window_size}")
        _validate(hp["kind"], hp["alpha"], hp["lamb"], hp["window_size"], hp["filter_type"])
        params = dict(self._params)
        unknown = set(state_dict["state"]) - set(params)
        if unknown:
            raise ValueError(f"state_dict has state for unknown parameters: {sorted(map(str, unknown))}")
        self.alpha, self.lamb, self.filter_type = float(hp["alpha"]), float(hp["lamb"]), hp["filter_type"]
        self.warmup, self.enabled = bool(hp["warmup"]), bool(hp["enabled"])
        self._plan = None  # new state tensors: regroup at the next step
        self.state = {
            key: {name: v.to(device=params[key].device, dtype=params[key].dtype, copy=True)
                  if isinstance(v, torch.Tensor) else v for name, v in st.items()}
            for key, st in state_dict["state"].items()
        }
