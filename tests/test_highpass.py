"""The EMA high-pass filter (issue 21 Q5): g_hat = g + lamb*(g - EMA_alpha(g)), EMA seeded with the first g.
Closed forms, loop == foreach, state_dict round trip, the CLI option, and populations (a member equals its
solo run). The low-pass kinds' own tests (tests/test_grokfast.py) are unchanged."""
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from grokfast import GradFilter
from repro.cli import run
from repro.config import load_config, run_name
from repro.population_filter import make_stacked_filter
from repro.step import make_filter
from repro.tasks.modular import ModularConfig, ModularTask
from test_grokfast import CUDA, Tiny, grads_of, set_random_grads

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("alpha, lamb, expected", [
    # g = 1, 2, 3; h = 1, 1.5, 2.25 (h_1 = g_1); g + 2*(g - h) = 1, 2 + 2*0.5, 3 + 2*0.75
    (0.5, 2.0, [1.0, 3.0, 4.5]),
    # alpha 0: h = g, nothing left to amplify
    (0.0, 2.0, [1.0, 2.0, 3.0]),
    # alpha 0.75, lamb 4: h = 1, 1.25, 1.6875; g + 4*(g - h) = 1, 2 + 3, 3 + 5.25
    (0.75, 4.0, [1.0, 5.0, 8.25]),
])
def test_closed_form_three_steps(foreach, alpha, lamb, expected):
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(()))
    filt = GradFilter(model, "ema_highpass", alpha=alpha, lamb=lamb, foreach=foreach)
    out = []
    for g in (1.0, 2.0, 3.0):
        model.x.grad = torch.tensor(g)
        filt.step()
        out.append(model.x.grad.item())
    assert out == expected
    assert filt.state["x"]["ema"].item() == pytest.approx({0.5: 2.25, 0.0: 3.0, 0.75: 1.6875}[alpha])


def test_matches_the_formula_over_many_steps_and_the_mirror_of_low_pass():
    """Float64 recomputation from the raw history; low-pass + high-pass on one history = (1+lamb)*g + ... :
    their sum is 2g + lamb*g exactly in exact arithmetic (the EMA terms cancel)."""
    alpha, lamb = 0.9, 3.0
    hp, lp = nn.Module(), nn.Module()
    hp.x, lp.x = nn.Parameter(torch.zeros(6)), nn.Parameter(torch.zeros(6))
    fh, fl = GradFilter(hp, "ema_highpass", alpha=alpha, lamb=lamb), GradFilter(lp, "ema", alpha=alpha, lamb=lamb)
    gen, hist = torch.Generator().manual_seed(0), []
    for t in range(1, 40):
        g = torch.randn(6, generator=gen)
        hist.append(g.double())
        hp.x.grad, lp.x.grad = g.clone(), g.clone()
        fh.step(), fl.step()
        weights = [alpha ** (t - 1)] + [(1 - alpha) * alpha ** (t - i) for i in range(2, t + 1)]
        h = torch.tensordot(torch.tensor(weights, dtype=torch.float64), torch.stack(hist), dims=1)
        torch.testing.assert_close(hp.x.grad.double(), g.double() + lamb * (g.double() - h), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hp.x.grad + lp.x.grad, (2 + lamb) * g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA"))])
def test_foreach_equals_loop(device):
    torch.manual_seed(0)
    models = [Tiny().to(device), None]
    models[1] = copy.deepcopy(models[0])
    filters = [GradFilter(m, "ema_highpass", alpha=0.9, lamb=2.0, foreach=fe) for m, fe in zip(models, (False, True))]
    for step in range(60):
        for m, f in zip(models, filters):
            set_random_grads(m, torch.Generator().manual_seed(step), step)
            f.enabled = step % 11 != 5
            f.step()
        loop, fore = grads_of(models[0]), grads_of(models[1])
        for name in loop:
            if device == "cpu":
                assert (loop[name] is None and fore[name] is None) or torch.equal(loop[name], fore[name]), name
            elif loop[name] is not None:
                torch.testing.assert_close(fore[name], loop[name])


def test_state_dict_carries_the_kind_and_kinds_do_not_mix():
    """The bitwise round trip is test_grokfast's (parametrized over ema_highpass too); here: the loaded
    filter takes kind, alpha and lamb from the file, and an 'ema' filter refuses a high-pass state."""
    model = Tiny()
    filt = GradFilter(model, "ema_highpass", alpha=0.95, lamb=2.0)
    set_random_grads(model, torch.Generator().manual_seed(0), 0)
    filt.step()
    buffer = io.BytesIO()
    torch.save(filt.state_dict(), buffer)
    buffer.seek(0)
    sd = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = GradFilter(Tiny(), "ema_highpass", lamb=123.0)
    fresh.load_state_dict(sd)
    assert (fresh.kind, fresh.alpha, fresh.lamb) == ("ema_highpass", 0.95, 2.0)
    with pytest.raises(ValueError, match="kind"):
        GradFilter(Tiny(), "ema").load_state_dict(sd)


def test_validation_and_repr():
    with pytest.raises(ValueError, match="alpha"):
        GradFilter(Tiny(), "ema_highpass", alpha=1.0)
    with pytest.raises(ValueError, match="lamb"):
        GradFilter(Tiny(), "ema_highpass", lamb=float("nan"))
    f = GradFilter(Tiny(), "ema_highpass")
    assert f.lamb == 2.0 and "alpha=0.98" in repr(f)


# --------------------------------------------------------------------------- the option


def test_config_option_run_name_and_make_filter():
    cfg = load_config(ModularConfig, ["--filter", "ema_highpass", "--alpha", "0.98", "--lamb", "2"])
    assert cfg.filter == "ema_highpass"
    assert "_emahp_a0.98_l2_" in run_name(cfg, "mod")
    ema = load_config(ModularConfig, ["--filter", "ema", "--alpha", "0.98", "--lamb", "2"])
    assert run_name(ema, "mod") != run_name(cfg, "mod")
    filt = make_filter(cfg, nn.Linear(2, 2))
    assert (filt.kind, filt.alpha, filt.lamb) == ("ema_highpass", 0.98, 2.0)


def test_main_cpu_smoke_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", "--filter", "ema_highpass", "--p", "11", "--dim", "32", "--num_heads", "2",
         "--num_layers", "1", "--batch_size", "32", "--budget", "20", "--device", "cpu", "--progress", "false",
         "--results_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in tmp_path.rglob("summary.json")]
    assert "emahp_a0.98_l2" in folder.parent.name


# --------------------------------------------------------------------------- populations


def test_stacked_filter_mixes_low_and_high_pass_members():
    cfgs = [load_config(ModularConfig, flags) for flags in
            (["--filter", "ema_highpass"], ["--filter", "ema"], ["--filter", "none"])]
    param = torch.zeros(3, 4, requires_grad=True)
    filt = make_stacked_filter(cfgs, param)
    assert filt.kind == "ema" and filt.highpass.tolist() == [True, False, False]
    solos = [GradFilter([torch.zeros(4, requires_grad=True)], kind) for kind in ("ema_highpass", "ema")]
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        g = torch.randn(3, 4, generator=gen)
        param.grad = g.clone()
        filt.step()
        for i, solo in enumerate(solos):
            (p,) = [p for _, p in solo._params]
            p.grad = g[i].clone()
            solo.step()
            torch.testing.assert_close(param.grad[i], p.grad, rtol=1e-6, atol=1e-6)
        assert torch.equal(param.grad[2], g[2])
    sd = filt.state_dict()
    again = make_stacked_filter(cfgs[1:2] * 3, torch.zeros(3, 4, requires_grad=True))
    again.load_state_dict(sd)
    assert again.highpass.tolist() == [True, False, False] and again._any_highpass


def test_population_member_equals_its_solo_run(tmp_path):
    """50 steps, to 1e-5 (vmap's batched matmuls round differently: see tests/test_population_engine.py)."""
    flags = ["--p", "11", "--dim", "32", "--num_heads", "2", "--num_layers", "1", "--batch_size", "32",
             "--budget", "50", "--device", "cpu", "--progress", "false", "--weight_decay", "0.005"]
    members = [{"seed": 0, "filter": "ema_highpass"}, {"seed": 0, "filter": "ema"},
               {"seed": 1, "filter": "ema_highpass", "lamb": 5.0}]
    path = tmp_path / "members.yaml"
    path.write_text("".join(f"- {json.dumps(m)}\n" for m in members))
    assert run(ModularConfig, ModularTask, "", [*flags, "--population", str(path), "--results_dir", str(tmp_path / "pop")]) == 0
    for member in members:
        solo = [f"--{k}={v}" for k, v in member.items()]
        assert run(ModularConfig, ModularTask, "", [*flags, *solo, "--results_dir", str(tmp_path / "solo")]) == 0
    pop = sorted((tmp_path / "pop" / ModularTask.name).iterdir())
    solo = sorted((tmp_path / "solo" / ModularTask.name).iterdir())
    assert [p.name for p in pop] == [s.name for s in solo] and len(pop) == 3
    for p, s in zip(pop, solo):
        a = [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (s / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in a] == [r["step"] for r in b] and a
        for x, y in zip(a, b):
            for key in x.keys() - {"elapsed_s"}:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (p.name, x["step"], key)
