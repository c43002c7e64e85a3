"""The per-member optimizer and filter over stacked tensors against torch.optim and grokfast.GradFilter.

Each member of a stack must follow, step for step, torch.optim / GradFilter built with that member's
hyperparameters. Tolerance: 1e-6 relative (about 8 float32 ulps); on the x86 CPUs tried the results are
bitwise equal (the ops mirror torch's own, see repro/population_optim.py), but that is a property of
the kernels, not something the formulas promise.
"""
import copy
import math

import pytest
import torch

from grokfast import GradFilter
from repro.config import Config
from repro.population import Layout
from repro.population_filter import StackedGradFilter, make_stacked_filter
from repro.population_optim import StackedAdam, StackedSGD, make_stacked_optimizer

SHAPES = {"weight": (3, 4), "bias": (4,)}  # two parameters: states split and join by name
ATOL, RTOL = 1e-7, 1e-6


class TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(SHAPES["weight"]))
        self.bias = torch.nn.Parameter(torch.zeros(SHAPES["bias"]))


LAYOUT = Layout(TwoParams())
N = LAYOUT.numel


def stacked(members: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(members, N, generator=g)


def grads(steps: int, members: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(members, N, generator=g) * 10 ** -k for k in range(steps)]  # shrinking: Adam's v matters


def member_model(row: torch.Tensor) -> TwoParams:
    model = TwoParams()
    with torch.no_grad():
        for name, value in LAYOUT.split(row).items():
            getattr(model, name).copy_(value)
    return model


def set_grads(model: torch.nn.Module, row: torch.Tensor) -> None:
    for name, value in LAYOUT.split(row).items():
        getattr(model, name).grad = value.clone()


def assert_member(model: torch.nn.Module, row: torch.Tensor) -> None:
    for name, value in LAYOUT.split(row).items():
        torch.testing.assert_close(value, getattr(model, name).detach(), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------- optimizers

ADAM_MEMBERS = [dict(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0),
                dict(lr=3e-2, betas=(0.8, 0.999), weight_decay=0.1),
                dict(lr=1e-1, betas=(0.0, 0.5), weight_decay=1.0)]
SGD_MEMBERS = [dict(lr=1e-2, momentum=0.9, weight_decay=0.0),
               dict(lr=1e-1, momentum=0.0, weight_decay=0.01),
               dict(lr=3e-2, momentum=0.5, weight_decay=0.1)]


def stacked_adam(param, decoupled):
    return StackedAdam(param, lr=[m["lr"] for m in ADAM_MEMBERS], betas=[m["betas"] for m in ADAM_MEMBERS],
                       weight_decay=[m["weight_decay"] for m in ADAM_MEMBERS], decoupled_weight_decay=decoupled)


def stacked_sgd(param, nesterov):
    members = [{**m, "momentum": m["momentum"] or 0.3} for m in SGD_MEMBERS] if nesterov else SGD_MEMBERS
    return StackedSGD(param, lr=[m["lr"] for m in members], momentum=[m["momentum"] for m in members],
                      weight_decay=[m["weight_decay"] for m in members], nesterov=nesterov), members


def run_against_torch(stack, param, torch_optimizers, models, lr_factors):
    """Step the stack and each member's torch optimizer with the same gradients and lr factors."""
    for step, (g, factor) in enumerate(zip(grads(len(lr_factors), param.shape[0]), lr_factors)):
        stack.set_lr_factor(factor)
        param.grad = g.clone()
        stack.step()
        for i, (opt, model) in enumerate(zip(torch_optimizers, models)):
            opt.param_groups[0]["lr"] = opt.defaults["lr"] * factor
            set_grads(model, g[i])
            opt.step()
            assert_member(model, param[i])


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_adam_members_follow_torch(decoupled):
    param = stacked(3)
    models = [member_model(row) for row in param]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    torch_optimizers = [cls(m.parameters(), **hp) for m, hp in zip(models, ADAM_MEMBERS)]
    # one step, a second, then a warm-up-like lr change: bias corrections use each member's count
    run_against_torch(stacked_adam(param, decoupled), param, torch_optimizers, models, [1.0, 1.0, 0.5])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_members_follow_torch(nesterov):
    param = stacked(3)
    stack, members = stacked_sgd(param, nesterov)
    models = [member_model(row) for row in param]
    torch_optimizers = [torch.optim.SGD(m.parameters(), nesterov=nesterov, **hp) for m, hp in zip(models, members)]
    run_against_torch(stack, param, torch_optimizers, models, [1.0, 1.0, 0.5])


def test_adam_first_step_closed_form():
    """Adam's first step from p = 0 (so no decay term): m = (1-b1) g and v = (1-b2) g^2, whose bias
    corrections cancel the (1-b) factors: p = -lr * g / (|g| + eps)."""
    param = torch.zeros(3, N)
    stack = stacked_adam(param, decoupled=False)
    g = grads(1, 3)[0]
    param.grad = g.clone()
    stack.step()
    lr = torch.tensor([m["lr"] for m in ADAM_MEMBERS])[:, None]
    torch.testing.assert_close(param, -lr * g / (g.abs() + 1e-8), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("make", [lambda p: stacked_adam(p, True), lambda p: stacked_sgd(p, True)[0]],
                         ids=["AdamW", "SGD"])
def test_inactive_member_is_frozen_exactly(make):
    param = stacked(3)
    reference_param = param.clone()
    stack, reference = make(param), make(reference_param)
    for g in grads(2, 3):
        param.grad, reference_param.grad = g.clone(), g.clone()
        stack.step(), reference.step()
    frozen = (param[1].clone(), {k: v[1].clone() for k, v in stack.state.items()}, stack.step_count[1].clone())
    g = grads(3, 3, seed=5)[2]
    g[1] = float("nan")  # a diverged member's gradient must not leak into its state
    param.grad, reference_param.grad = g.clone(), g.clone()
    stack.step(torch.tensor([True, False, True]))
    reference.step()
    assert torch.equal(param[1], frozen[0]) and torch.equal(stack.step_count[1], frozen[2])
    assert all(torch.equal(v[1], frozen[1][k]) for k, v in stack.state.items())
    for i in (0, 2):  # the others step as if nothing happened
        assert torch.equal(param[i], reference_param[i])


@pytest.mark.parametrize("make", [lambda p: stacked_adam(p, False), lambda p: stacked_sgd(p, False)[0]],
                         ids=["Adam", "SGD"])
def test_optimizer_state_dict_round_trip(make):
    param = stacked(3)
    stack = make(param)
    for g in grads(2, 3):
        param.grad = g
        stack.step()
    stack.set_lr_factor(0.5)
    saved, saved_param = copy.deepcopy(stack.state_dict()), param.clone()
    other_param = torch.zeros_like(param)
    other = make(other_param)
    other.load_state_dict(saved)
    other_param.data.copy_(saved_param)
    g = grads(3, 3, seed=7)[2]
    param.grad, other_param.grad = g.clone(), g.clone()
    stack.step(), other.step()
    assert torch.equal(param, other_param)
    assert all(torch.equal(stack.state[k], other.state[k]) for k in stack.state)


@pytest.mark.parametrize("kind", ["Adam", "AdamW", "SGD"])
def test_member_state_dict_is_torch_optim_state(kind):
    """A member's unbound state continues in torch.optim as the stack does; stacking the torch states
    back gives the same stacked state."""
    param = stacked(3)
    if kind == "SGD":
        stack, members = stacked_sgd(param, nesterov=False)
        new = lambda model, hp: torch.optim.SGD(model.parameters(), **hp)
    else:
        stack, members = stacked_adam(param, kind == "AdamW"), ADAM_MEMBERS
        new = lambda model, hp: getattr(torch.optim, kind)(model.parameters(), **hp)
    for g in grads(2, 3):
        param.grad = g
        stack.step()
    states = [stack.member_state_dict(i, LAYOUT) for i in range(3)]
    if kind == "SGD":  # torch keeps no buffer for momentum 0
        assert states[1]["state"] == {} and set(states[0]["state"][0]) == {"momentum_buffer"}
    g = grads(3, 3, seed=9)[2]
    models = [member_model(row) for row in param]
    for i, (model, hp) in enumerate(zip(models, members)):
        opt = new(model, hp)
        opt.load_state_dict(states[i])
        set_grads(model, g[i])
        opt.step()
        states[i] = opt.state_dict()
    param.grad = g
    stack.step()
    for model, row in zip(models, param):
        assert_member(model, row)
    restacked = stacked_sgd(param.clone(), False)[0] if kind == "SGD" else stacked_adam(param.clone(), kind == "AdamW")
    restacked.load_member_state_dicts(states, LAYOUT)
    rows = [0, 2] if kind == "SGD" else [0, 1, 2]  # member 1 of SGD has momentum 0: no buffer to compare
    for key in stack.state:
        torch.testing.assert_close(restacked.state[key][rows], stack.state[key][rows], atol=ATOL, rtol=RTOL)
    if kind != "SGD":
        assert torch.equal(restacked.step_count, stack.step_count)


def test_member_state_dict_group_options():
    stack = stacked_adam(stacked(3), decoupled=True)
    group = stack.member_state_dict(1, LAYOUT, group_options={"fused": True})["param_groups"][0]
    assert group["lr"] == 3e-2 and group["betas"] == (0.8, 0.999) and group["fused"] is True
    assert group["params"] == [0, 1]


def test_optimizer_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta parameter at index 1 of member 0"):
        StackedAdam(stacked(1), lr=[1e-3], betas=[(0.9, 1.0)], weight_decay=[0.0])
    with pytest.raises(ValueError, match="3 values for 2 members"):
        StackedAdam(stacked(2), lr=[1e-3] * 3, betas=[(0.9, 0.98)] * 3, weight_decay=[0.0] * 3)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        StackedSGD(stacked(2), lr=[0.1, 0.1], momentum=[0.9, 0.0], weight_decay=[0.0, 0.0], nesterov=True)


def test_make_stacked_optimizer_from_configs():
    cfgs = [Config(optimizer="AdamW", lr=1e-3, weight_decay=0.01), Config(optimizer="AdamW", lr=2e-3, beta2=0.9)]
    stack = make_stacked_optimizer(cfgs, stacked(2))
    assert isinstance(stack, StackedAdam) and stack.decoupled_weight_decay
    assert stack.lr.tolist() == [1e-3, 2e-3] and stack.beta2.tolist() == [0.98, 0.9]
    with pytest.raises(ValueError, match="different optimizers"):
        make_stacked_optimizer([Config(optimizer="Adam"), Config(optimizer="SGD")], stacked(2))


# ------------------------------------------------------------------------------- filter

def filters_against_gradfilter(kind, steps, **shared):
    """The stacked filter (members: on, off, on with other alpha/lamb) and each on-member's GradFilter,
    fed the same gradients; returns them after `steps` steps, asserting agreement at every step."""
    alpha, lamb, on = [0.9, 0.5, 0.6], [2.0, 3.0, -1.5], [True, False, True]
    param = stacked(3)
    stack = StackedGradFilter(param, kind, alpha=alpha, lamb=lamb, on=on, **shared)
    models = [member_model(row) for row in param]
    solos = [GradFilter(m, kind=kind, alpha=a, lamb=lam, **shared) if o else None
             for m, a, lam, o in zip(models, alpha, lamb, on)]
    for g in grads(steps, 3, seed=3):
        param.grad = g.clone()
        stack.step()
        for i, (model, solo) in enumerate(zip(models, solos)):
            set_grads(model, g[i])
            if solo:
                solo.step()
            for name, value in LAYOUT.split(param.grad[i]).items():
                torch.testing.assert_close(value, getattr(model, name).grad, atol=ATOL, rtol=RTOL)
    return param, stack, models, solos


def test_ema_members_follow_gradfilter():
    filters_against_gradfilter("ema", 4)


@pytest.mark.parametrize("shared", [dict(window_size=3), dict(window_size=3, filter_type="sum"),
                                    dict(window_size=4, warmup=False)], ids=["mean", "sum", "no-warmup"])
def test_ma_members_follow_gradfilter(shared):
    filters_against_gradfilter("ma", 8, **shared)  # warm-up, two wraps of the ring and their re-sums


def test_ema_first_step_closed_form():
    """h is seeded with the first g (no bias correction): g_out = g + lamb*g."""
    param = stacked(2)
    stack = StackedGradFilter(param, "ema", alpha=[0.98, 0.5], lamb=[2.0, 5.0], on=[True, True])
    g = grads(1, 2)[0]
    param.grad = g.clone()
    stack.step()
    torch.testing.assert_close(param.grad, g * torch.tensor([[3.0], [6.0]]), atol=ATOL, rtol=RTOL)
    assert torch.equal(stack.state["ema"], g)


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_filter_off_and_inactive_members(kind):
    """An off member's gradient passes unchanged even when non-finite (never 0 * inf); an inactive
    member's gradient and state stay as they were."""
    param = stacked(3)
    stack = StackedGradFilter(param, kind, alpha=[0.9] * 3, lamb=[2.0] * 3, on=[True, False, True], window_size=2,
                              warmup=False)
    for g in grads(2, 3):
        param.grad = g.clone()
        stack.step()
    before = {k: v.clone() for k, v in stack.state.items()}
    counts = stack.counts.clone()
    g = grads(3, 3, seed=4)[2]
    g[1, 0], g[2] = float("inf"), float("nan")
    param.grad = g.clone()
    stack.step(torch.tensor([True, True, False]))
    assert torch.equal(param.grad[1], g[1])  # off: unchanged, inf included
    assert torch.isnan(param.grad[2]).all()  # inactive: unchanged
    assert not torch.equal(param.grad[0], g[0])  # on and active: filtered
    for key, value in stack.state.items():
        index = (slice(None), 2) if value.ndim == 3 else 2
        assert torch.equal(value[index], before[key][index])
        assert torch.isfinite(value).all()  # the off member records nothing either
    assert stack.counts.tolist() == [counts[0].item() + 1, 0, counts[2].item()]


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_filter_state_dict_round_trip(kind):
    param = stacked(3)
    make = lambda p: StackedGradFilter(p, kind, alpha=[0.9, 0.8, 0.7], lamb=[1.0, 2.0, 3.0],
                                       on=[True, True, False], window_size=3)
    stack = make(param)
    for g in grads(4, 3):
        param.grad = g.clone()
        stack.step()
    other_param = param.clone()
    other = make(other_param)
    other.load_state_dict(copy.deepcopy(stack.state_dict()))
    g = grads(5, 3, seed=6)[4]
    param.grad, other_param.grad = g.clone(), g.clone()
    stack.step(), other.step()
    assert torch.equal(param.grad, other_param.grad)
    assert all(torch.equal(stack.state[k], other.state[k]) for k in stack.state)


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_filter_member_state_dict_is_gradfilter_state(kind):
    """A member's unbound state is its GradFilter's state; loaded into a fresh GradFilter it continues
    as the stack does; stacking the GradFilter states back restores the stacked state."""
    shared = dict(window_size=3) if kind == "ma" else {}
    param, stack, _, solos = filters_against_gradfilter(kind, 4, **shared)
    states = [stack.member_state_dict(i, LAYOUT) for i in range(3)]
    assert states[1] is None
    for state, solo in zip(states, solos):
        if solo is None:
            continue
        expected = solo.state_dict()
        assert state["hyperparams"] == expected["hyperparams"]
        assert state["state"].keys() == expected["state"].keys()
        for name, entry in expected["state"].items():
            assert state["state"][name].keys() == entry.keys()
            for key, value in entry.items():
                torch.testing.assert_close(state["state"][name][key], value, atol=ATOL, rtol=RTOL)
    g = grads(5, 3, seed=8)[4]
    param.grad = g.clone()
    stack.step()
    for i, state in enumerate(states):
        if state is None:
            continue
        model = member_model(param[i])
        fresh = GradFilter(model, kind=kind, **shared)
        fresh.load_state_dict(state)
        set_grads(model, g[i])
        fresh.step()
        solos[i] = fresh
        for name, value in LAYOUT.split(param.grad[i]).items():
            torch.testing.assert_close(value, getattr(model, name).grad, atol=ATOL, rtol=RTOL)
    restacked = StackedGradFilter(param, kind, alpha=[0.0] * 3, lamb=[0.0] * 3, on=[True, False, True], **shared)
    restacked.load_member_state_dicts([s.state_dict() if s else None for s in solos], LAYOUT)
    on = torch.tensor([True, False, True])  # the off member has no state to stack
    assert torch.equal(restacked.alpha[on], stack.alpha[on]) and torch.equal(restacked.lamb[on], stack.lamb[on])
    assert restacked.count == stack.count and restacked.counts.tolist()[1] == 0
    for key in stack.state:
        index = (slice(None), on) if key == "ring" else on
        torch.testing.assert_close(restacked.state[key][index], stack.state[key][index], atol=ATOL, rtol=RTOL)


def test_make_stacked_filter_from_configs():
    cfgs = [Config(filter="ema", alpha=0.9, lamb=3.0), Config(filter="none"), Config(filter="ema")]
    stack = make_stacked_filter(cfgs, stacked(3))
    assert stack.kind == "ema" and stack.on.tolist() == [True, False, True]
    assert stack.alpha.tolist() == [0.9, 0.98, 0.98] and stack.lamb.tolist() == [3.0, 2.0, 2.0]
    assert make_stacked_filter([Config(), Config()], stacked(2)) is None
    with pytest.raises(ValueError, match="mix filter kinds"):
        make_stacked_filter([Config(filter="ema"), Config(filter="ma")], stacked(2))
    with pytest.raises(ValueError, match="alpha value of member 1"):
        StackedGradFilter(stacked(2), "ema", alpha=[0.5, 1.0], lamb=[1.0, 1.0], on=[True, True])
    with pytest.raises(ValueError, match="lamb value of member 0"):
        StackedGradFilter(stacked(1), "ema", alpha=[0.5], lamb=[math.inf], on=[True])
