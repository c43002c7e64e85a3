"""Tests of grokfast.py: closed forms, equivalence with the formulas recomputed from scratch, foreach ==
loop, state_dict round trip, and the placement in real training (attach, clipping, accumulation, AMP)."""
import copy
import io
import re

import pytest
import torch
from torch import nn

import grokfast
from grokfast import GradFilter, gradfilter_ema, gradfilter_ma

CUDA = torch.cuda.is_available()


class Tiny(nn.Module):
    """Two float32 layers, a float64 vector (a second foreach group), a frozen parameter and a
    parameter whose gradient is missing at times (its window fills later than the others')."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2, bias=False)
        self.f64 = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.late = nn.Parameter(torch.zeros(5))


def set_random_grads(model, gen, step):
    """Fresh random gradients (new tensors, as backward with set_to_none makes); 'late' has none at
    first and on every third step; 'frozen' gets one that must be ignored."""
    for name, p in model.named_parameters():
        if name == "late" and (step < 7 or step % 3 == 0):
            p.grad = None
        else:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)


def grads_of(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


class Plain:
    """The paper's formulas, recomputed from the full history of raw gradients each step, in float64."""

    def __init__(self, kind, alpha=0.98, lamb=2.0, window_size=100, filter_type="mean", warmup=True):
        self.kind, self.alpha, self.lamb = kind, alpha, lamb
        self.w, self.filter_type, self.warmup = window_size, filter_type, warmup
        self.history = {}

    def __call__(self, name, g, enabled=True):
        hist = self.history.setdefault(name, [])
        hist.append(g.double())
        if self.kind == "ema":  # h_t = alpha^(t-1) g_1 + sum_{i>=2} (1-alpha) alpha^(t-i) g_i
            t = len(hist)
            weights = [self.alpha ** (t - 1)] + [(1 - self.alpha) * self.alpha ** (t - i) for i in range(2, t + 1)]
            slow = torch.tensordot(torch.tensor(weights, dtype=torch.float64), torch.stack(hist), dims=1)
            apply = True
        else:
            window = hist[-self.w:]
            slow = sum(window) / len(window) if self.filter_type == "mean" else sum(window)
            apply = not self.warmup or len(window) == self.w
        return (g.double() + self.lamb * slow if apply and enabled else g.double()).to(g.dtype)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("api", ["functional", "loop", "foreach"])
@pytest.mark.parametrize("kind, kwargs, expected", [
    # h: 1, 1.5, 2.25 -> g + 2h
    ("ema", dict(alpha=0.5, lamb=2.0), [3.0, 5.0, 7.5]),
    ("ema", dict(alpha=0.0, lamb=2.0), [3.0, 6.0, 9.0]),
    # windows [1], [1,2], [2,3]
    ("ma", dict(window_size=2, lamb=2.0), [1.0, 2 + 2 * 1.5, 3 + 2 * 2.5]),
    ("ma", dict(window_size=2, lamb=2.0, warmup=False), [1 + 2 * 1.0, 2 + 2 * 1.5, 3 + 2 * 2.5]),
    ("ma", dict(window_size=2, lamb=2.0, filter_type="sum"), [1.0, 2 + 2 * 3.0, 3 + 2 * 5.0]),
    ("ma", dict(window_size=2, lamb=2.0, warmup=False, trigger=True), [1.0, 2.0, 3.0]),
    ("ma", dict(window_size=1, lamb=5.0), [6.0, 12.0, 18.0]),
])
def test_closed_form_three_steps(api, kind, kwargs, expected):
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(()))
    kwargs = dict(kwargs)
    trigger = kwargs.pop("trigger", False)
    if api != "functional":
        filt = GradFilter(model, kind, foreach=api == "foreach", enabled=not trigger, **kwargs)
    state, out = None, []
    for g in (1.0, 2.0, 3.0):
        model.x.grad = torch.tensor(g)
        if api == "functional" and kind == "ema":
            state = gradfilter_ema(model, state, **kwargs)
        elif api == "functional":
            state = gradfilter_ma(model, state, trigger=trigger, **kwargs)
        else:
            filt.step()
        out.append(model.x.grad.item())
    assert out == expected


def test_reference_defaults():
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(()))
    model.x.grad = torch.tensor(1.0)
    gradfilter_ema(model)  # alpha 0.98, lamb 2: first step g -> (1 + lamb) g
    assert model.x.grad.item() == 3.0
    assert GradFilter(model).lamb == 2.0 and GradFilter(model, "ma").lamb == 5.0
    assert GradFilter(model, "ma").window_size == 100


# --------------------------------------------------------------------------- equivalence with the formulas

CONFIGS = {
    "ema": ("ema", dict(alpha=0.9, lamb=2.0)),
    "ma_mean": ("ma", dict(window_size=7, lamb=5.0)),
    "ma_mean_nowarmup": ("ma", dict(window_size=7, lamb=5.0, warmup=False)),
    "ma_sum": ("ma", dict(window_size=7, lamb=0.5, filter_type="sum")),
    "ma_sum_nowarmup": ("ma", dict(window_size=7, lamb=0.5, filter_type="sum", warmup=False)),
}


def trigger_at(step):  # an ablation switch that flips: off, on (the two-stage schedule), then random-ish
    return step < 40 or step % 11 == 0


@pytest.mark.parametrize("toggle", [False, True], ids=["always_on", "trigger"])
@pytest.mark.parametrize("api", ["functional", "loop", "foreach"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_formulas_recomputed_from_scratch(config, api, toggle):
    kind, kwargs = CONFIGS[config]
    if api == "functional" and kind == "ema" and toggle:
        pytest.skip("gradfilter_ema has no trigger (as the reference)")
    torch.manual_seed(0)
    model, gen = Tiny(), torch.Generator().manual_seed(1)
    plain = Plain(kind, **kwargs)
    filt = GradFilter(model, kind, foreach=api == "foreach", **kwargs)
    state = None
    for step in range(300):
        set_random_grads(model, gen, step)
        raw = grads_of(model)
        enabled = not (toggle and trigger_at(step))
        if api == "functional" and kind == "ema":
            state = gradfilter_ema(model, state, **kwargs)
        elif api == "functional":
            state = gradfilter_ma(model, state, trigger=not enabled, **kwargs)
        else:
            filt.enabled = enabled
            filt.step()
        for name, p in model.named_parameters():
            if raw[name] is None:
                assert p.grad is None
                continue
            if name == "frozen":  # requires_grad=False: left alone
                assert torch.equal(p.grad, raw[name])
                continue
            expected = plain(name, raw[name], enabled)
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-5, msg=f"{name} step {step}")


# --------------------------------------------------------------------------- foreach == loop


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA"))])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_foreach_equals_loop(config, device):
    kind, kwargs = CONFIGS[config]
    torch.manual_seed(0)
    models = [Tiny().to(device), None]
    models[1] = copy.deepcopy(models[0])
    filters = [GradFilter(m, kind, foreach=fe, **kwargs) for m, fe in zip(models, (False, True))]
    for step in range(100):
        for m, f in zip(models, filters):
            set_random_grads(m, torch.Generator().manual_seed(step), step)
            f.enabled = not trigger_at(step)
            f.step()
        loop, fore = grads_of(models[0]), grads_of(models[1])
        for name in loop:
            if device == "cpu":  # the same op sequence: bit for bit
                assert (loop[name] is None and fore[name] is None) or torch.equal(loop[name], fore[name]), name
            elif loop[name] is not None:
                torch.testing.assert_close(fore[name], loop[name])


def test_default_foreach_mirrors_torch_optim():
    assert grokfast._default_foreach([torch.zeros(1)]) is False  # CPU: a loop, like torch.optim
    if CUDA:
        assert grokfast._default_foreach([torch.zeros(1, device="cuda")]) is True


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("config", ["ema", "ma_mean", "ma_sum_nowarmup", "ema_highpass"])
def test_state_dict_round_trip_is_bitwise(config):
    kind, kwargs = {**CONFIGS, "ema_highpass": ("ema_highpass", dict(alpha=0.95, lamb=2.0))}[config]
    torch.manual_seed(0)
    model = Tiny()
    filt = GradFilter(model, kind, **kwargs)
    for step in range(19):  # mid-window for every parameter
        set_random_grads(model, torch.Generator().manual_seed(step), step)
        filt.step()
    buffer = io.BytesIO()
    torch.save(filt.state_dict(), buffer)

    def continue_run(m, f):
        out = []
        for step in range(19, 60):
            set_random_grads(m, torch.Generator().manual_seed(step), step)
            f.step()
            out.append(grads_of(m))
        return out

    original = continue_run(model, filt)
    fresh_model = Tiny()
    fresh = GradFilter(fresh_model, kind, **{**kwargs, "lamb": 123.0})  # hyperparameters come from the file
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    assert fresh.lamb == filt.lamb
    resumed = continue_run(fresh_model, fresh)
    for a, b in zip(original, resumed):
        for name in a:
            assert (a[name] is None and b[name] is None) or torch.equal(a[name], b[name]), name


def test_load_state_dict_rejects_mismatch():
    model = Tiny()
    set_random_grads(model, torch.Generator().manual_seed(0), 10)
    ema, ma = GradFilter(model, "ema"), GradFilter(model, "ma", window_size=5)
    ema.step()
    ma.step()
    with pytest.raises(ValueError, match="kind"):
        GradFilter(model, "ma", window_size=5).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="window_size"):
        GradFilter(model, "ma", window_size=6).load_state_dict(ma.state_dict())
    with pytest.raises(ValueError, match="unknown parameters"):  # names vs positions
        GradFilter(list(model.parameters()), "ema").load_state_dict(ema.state_dict())


def test_skips_frozen_and_missing_grads_until_they_appear():
    model = Tiny()
    filt = GradFilter(model, "ma", window_size=3)
    set_random_grads(model, torch.Generator().manual_seed(0), step=0)  # 'late' has no grad yet
    frozen_grad = model.frozen.grad.clone()
    filt.step()
    state = gradfilter_ema(model)
    assert set(filt.state) == set(state) == {"a.weight", "a.bias", "b.weight", "f64"}
    assert torch.equal(model.frozen.grad, frozen_grad)
    set_random_grads(model, torch.Generator().manual_seed(1), step=8)
    filt.step()
    state = gradfilter_ema(model, state)
    assert "late" in filt.state and "late" in state and "frozen" not in filt.state
    assert filt.state["late"]["count"] == 1 and filt.state["a.weight"]["count"] == 2


def test_iterable_of_parameters_is_keyed_by_position():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))]
    params[1].grad = torch.ones(3)
    filt = GradFilter(iter(params), "ema")
    filt.step()
    assert list(filt.state) == [1]
    with pytest.raises(TypeError):
        GradFilter(params[0])


def test_state_never_aliases_grad():
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(3))
    model.x.grad = torch.ones(3)
    ema = gradfilter_ema(model)
    ma = gradfilter_ma(model, window_size=2)
    filt = GradFilter(model, "ema")
    filt.step()
    snapshots = [ema["x"].clone(), ma["x"][0].clone(), filt.state["x"]["ema"].clone()]
    model.x.grad.mul_(100.0)  # e.g. zero_grad(set_to_none=False) then backward accumulating in place
    model.x.grad.zero_()
    for now, before in zip([ema["x"], ma["x"][0], filt.state["x"]["ema"]], snapshots):
        assert torch.equal(now, before)


def test_functional_ma_state_is_a_dict_of_deques_and_accepts_plain_dicts():
    torch.manual_seed(0)
    model, gen = Tiny(), torch.Generator().manual_seed(3)
    twin = copy.deepcopy(model)
    state = twin_state = None
    for step in range(40):
        set_random_grads(model, gen, step)
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = None if p.grad is None else p.grad.clone()
        state = gradfilter_ma(model, state, window_size=5)
        # a plain dict (as the reference returns) loses the hidden running sums: they are rebuilt
        twin_state = gradfilter_ma(twin, None if twin_state is None else dict(twin_state), window_size=5)
        for p, q in zip(model.parameters(), twin.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad)
    assert isinstance(state, dict) and state["a.weight"].maxlen == 5 and len(state["a.weight"]) == 5
    assert all(isinstance(t, torch.Tensor) for t in state["a.weight"])


# --------------------------------------------------------------------------- O(1) MA: no drift


@pytest.mark.parametrize("api", ["functional", "filter"])
def test_running_sum_does_not_drift_over_20000_steps(api):
    """After 20,000 steps the O(1) running sum is as accurate as re-summing the window in float32 (the
    reference's way): both measured against a float64 re-sum, over every ring position."""
    w, lamb, steps = 100, 5.0, 20_000 + 250
    gen = torch.Generator().manual_seed(0)
    # a large common offset: the running sum sits near 1e5, where a float32 ulp is 2^-7
    grads = (1000.0 + torch.randn(steps, 16, generator=gen, dtype=torch.float64) * 10.0).float()
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(16))
    filt, state = GradFilter(model, "ma", window_size=w, lamb=lamb), None
    ours = resum_fp32 = 0.0
    for t in range(steps):
        model.x.grad = grads[t].clone()
        if api == "filter":
            filt.step()
        else:
            state = gradfilter_ma(model, state, window_size=w, lamb=lamb)
        if t + 1 == 20_000:  # the ring just wrapped: the running sum was replaced by an exact re-sum
            if api == "filter":
                assert torch.equal(filt.state["x"]["sum"], filt.state["x"]["window"].sum(0))
            else:
                assert torch.equal(state.sums["x"], sum(state["x"], torch.zeros(16)))
        if t >= steps - 2 * w:  # right after the periodic exact re-sum and far from it
            window = grads[t - w + 1: t + 1]
            exact = grads[t].double() + lamb * window.double().mean(0)
            reference_way = grads[t] + sum(window) / w * lamb
            ours = max(ours, (model.x.grad.double() - exact).abs().max().item())
            resum_fp32 = max(resum_fp32, (reference_way.double() - exact).abs().max().item())
    assert 0 < ours < 3 * resum_fp32, (ours, resum_fp32)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=-0.1), "Invalid alpha value: -0.1"),
    (dict(alpha=1.0), "Invalid alpha value: 1.0"),
    (dict(alpha=float("nan")), "Invalid alpha value: nan"),
    (dict(lamb=float("inf")), "Invalid lamb value: inf"),
    (dict(lamb=float("nan")), "Invalid lamb value: nan"),
    (dict(lamb="2"), "Invalid lamb value: 2"),
    (dict(window_size=0), "Invalid window_size value: 0"),
    (dict(window_size=2.5), "Invalid window_size value: 2.5"),
    (dict(window_size=True), "Invalid window_size value: True"),
    (dict(filter_type="median"), "Invalid filter_type value: 'median'"),
    (dict(kind="fir"), "Invalid kind value: 'fir'"),
])
def test_validation(kwargs, message):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=re.escape(message)):
        GradFilter(model, **kwargs)
    functional = {k: v for k, v in kwargs.items() if k != "kind"}
    if "alpha" in functional or "lamb" in functional:
        with pytest.raises(ValueError, match="Invalid"):
            gradfilter_ema(model, **{k: v for k, v in functional.items() if k in ("alpha", "lamb")})
    if "alpha" not in functional and functional:
        with pytest.raises(ValueError, match="Invalid"):
            gradfilter_ma(model, **functional)


def test_sparse_gradients_are_rejected():
    model = nn.Embedding(5, 2, sparse=True)
    model(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        GradFilter(model).step()


# --------------------------------------------------------------------------- real training


def regression_setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    data = torch.randn(32, 6, generator=torch.Generator().manual_seed(seed))
    target = torch.randn(32, 1, generator=torch.Generator().manual_seed(seed + 1))
    return model, data, target


def loss_fn(model, data, target):
    return ((model(data) - target) ** 2).mean()


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_attach_to_adam_equals_manual_filter_then_step(kind):
    (m1, x, y), (m2, _, _) = regression_setup(), regression_setup()
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    f1, f2 = GradFilter(m1, kind, window_size=5), GradFilter(m2, kind, window_size=5)
    handle = f2.attach(o2)
    for _ in range(20):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            loss_fn(m, x, y).backward()
        f1.step()
        o1.step()
        o2.step()  # the pre-hook filters first
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    handle.remove()
    before = copy.deepcopy(f2.state_dict())
    loss_fn(m2, x, y).backward()
    o2.step()
    assert all(torch.equal(a, b) for a, b in zip(before["state"]["0.weight"].values(),
                                                  f2.state_dict()["state"]["0.weight"].values())
               if isinstance(a, torch.Tensor))
    f2.attach(o2)
    f2.detach()
    assert not o2._optimizer_step_pre_hooks


def test_clip_then_filter():
    model, x, y = regression_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    filt = GradFilter(model, "ema", lamb=2.0)
    filt.attach(opt)
    (100.0 * loss_fn(model, x, y)).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    assert norm > 1.0  # the clip is active
    clipped = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for (name, p), c, r in zip(model.named_parameters(), clipped, raw):
        assert torch.equal(filt.state[name]["ema"], c) and not torch.equal(c, r)  # the filter saw clipped grads


def test_accumulation_filters_once_per_optimizer_step():
    (m1, x, y), (m2, _, _) = regression_setup(), regression_setup()
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    f1, f2 = GradFilter(m1, "ma", window_size=3), GradFilter(m2, "ma", window_size=3)
    f2.attach(o2)
    for step in range(6):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            for micro in range(4):
                (loss_fn(m, x[micro::4], y[micro::4]) / 4).backward()
        f1.step()  # manual: once, on the accumulated gradient
        o1.step()
        o2.step()
    assert all(st["count"] == 6 for st in f2.state.values())
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_unscales_before_the_attached_filter_and_skips_inf_steps():
    (m1, x, y), (m2, _, _) = regression_setup(), regression_setup()
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    f1, f2 = GradFilter(m1, "ema"), GradFilter(m2, "ema")
    f2.attach(o2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)  # powers of two: unscaling is exact
    for _ in range(10):
        o1.zero_grad()
        loss_fn(m1, x, y).backward()
        f1.step()
        o1.step()
        o2.zero_grad()
        scaler.scale(loss_fn(m2, x, y)).backward()
        scaler.step(o2)  # unscale_, then (no inf) o2.step() whose pre-hook filters
        scaler.update()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    for name in f1.state:
        assert torch.equal(f1.state[name]["ema"], f2.state[name]["ema"])

    before = copy.deepcopy(f2.state_dict())
    params_before = [p.clone() for p in m2.parameters()]
    o2.zero_grad()
    scaler.scale(loss_fn(m2, x, y)).backward()
    next(m2.parameters()).grad[0, 0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(o2)  # skipped: no optimizer step, no filter step
    scaler.update()
    assert scaler.get_scale() < scale
    for name, st in before["state"].items():
        assert torch.equal(st["ema"], f2.state[name]["ema"])
    assert all(torch.equal(a, b) for a, b in zip(params_before, m2.parameters()))


def test_grad_scaler_manual_order():
    (m1, x, y), (m2, _, _) = regression_setup(), regression_setup()
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    f1, f2 = GradFilter(m1, "ma", window_size=3), GradFilter(m2, "ma", window_size=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for _ in range(8):
        o1.zero_grad()
        loss_fn(m1, x, y).backward()
        torch.nn.utils.clip_grad_norm_(m1.parameters(), 0.5)
        f1.step()
        o1.step()
        o2.zero_grad()
        scaler.scale(loss_fn(m2, x, y)).backward()
        scaler.unscale_(o2)  # the documented manual order: unscale, clip, filter, step
        torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.5)
        f2.step()
        scaler.step(o2)
        scaler.update()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.skipif(not CUDA, reason="no CUDA")
@pytest.mark.parametrize("kind", ["ema", "ema_highpass"])
def test_ema_step_captures_in_a_cuda_graph(kind):
    params = [torch.zeros(4, 3, device="cuda", requires_grad=True), torch.zeros(7, device="cuda", requires_grad=True)]
    eager = [p.detach().clone().requires_grad_() for p in params]
    graphed, reference = GradFilter(params, kind, alpha=0.9), GradFilter(eager, kind, alpha=0.9)
    for p in params + eager:
        p.grad = torch.zeros_like(p)
    graphed.step()  # create the state outside the capture
    reference.step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graphed.step()
        reference.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(5):
        for p, q in zip(params, eager):
            p.grad.copy_(torch.randn(p.shape, device="cuda", generator=gen))
            q.grad.copy_(p.grad)
        graph.replay()
        reference.step()
        for p, q in zip(params, eager):
            torch.testing.assert_close(p.grad, q.grad)


def test_ma_regrouping_keeps_no_old_ring_alive():
    """A parameter whose gradient goes missing leaves its group; its state then owns its own memory, so
    the group's old (w, N) ring is freed instead of staying alive behind that parameter's views."""
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(5))
    filt = GradFilter(model, "ma", window_size=4)
    for step in range(6):
        model.a.grad = torch.full((3,), float(step))
        model.b.grad = torch.full((5,), float(step)) if step < 3 else None
        filt.step()
    windows = {k: filt.state[k]["window"] for k in ("a", "b")}
    assert windows["b"].untyped_storage().nbytes() == 4 * 5 * 4  # its own window, nothing more
    assert windows["a"].untyped_storage().nbytes() == 4 * 3 * 4  # a's new group holds only a
    assert torch.equal(windows["b"], torch.tensor([[0.0] * 5, [1.0] * 5, [2.0] * 5, [0.0] * 5]))
    assert filt.state["b"]["count"] == 3 and filt.state["a"]["count"] == 6
