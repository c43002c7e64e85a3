"""Sweep files: expansion into members, their folder names, one-line errors, and the stored spec."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.errors import UserError
from repro.sweep_spec import load_sweep, store_or_check_spec

REPO = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path: Path, stem: str = "s", **spec) -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump({"task": "modular", "seeds": [0], **spec}))
    return path


def test_grid_times_variants_times_seeds_with_every_layer_applied(tmp_path):
    path = sweep_file(tmp_path, base="configs/modular/ema.yaml", config={"p": 11, "budget": 30},
                      grid={"alpha": [0.9, 0.98], "lamb": [1, 2]}, variants=[{"weight_decay": 0}, {"lr": "3e-3"}],
                      seeds=[0, 1])
    sweep = load_sweep(path)
    assert sweep.name == "s" and sweep.task == "modular" and sweep.swept == ("alpha", "lamb", "weight_decay", "lr")
    assert len(sweep.members) == 2 * 2 * 2 * 2
    first, last = sweep.members[0], sweep.members[-1]
    assert first.overrides == {"weight_decay": 0.0, "alpha": 0.9, "lamb": 1.0} and first.seed == 0
    assert (first.cfg.filter, first.cfg.p, first.cfg.budget, first.cfg.weight_decay) == ("ema", 11, 30, 0.0)
    assert (last.cfg.lr, last.cfg.weight_decay, last.cfg.alpha, last.cfg.lamb, last.seed) == (3e-3, 0.005, 0.98, 2.0, 1)
    assert isinstance(first.cfg.lamb, float)  # typed as the config's field
    assert first.name == "mul11_ema_a0.9_l1_adam_lr0.001_wd0_s0"  # the solo run's folder name
    assert len({m.name for m in sweep.members}) == len(sweep.members)


def test_members_that_would_share_a_folder_get_the_keys_that_tell_them_apart(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, config={"p": 11}, grid={"beta1": [0.9, 0.98]}))
    assert [m.name for m in sweep.members] == ["mul11_none_adam_lr0.001_wd0_beta1-0.9_s0",
                                               "mul11_none_adam_lr0.001_wd0_beta1-0.98_s0"]
    assert sweep.members[1].cfg.label == "beta1-0.98"


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"lamb": [1, "x"]}}, "config key 'lamb' must be float"),
    ({"grid": {"lambda": [1]}}, "unknown sweep"),
    ({"config": {"nope": 1}}, "unknown sweep"),
    ({"grid": {"lamb": []}}, "non-empty list"),
    ({"grid": {"lamb": [1, 1]}}, "repeats a value"),
    ({"grid": {"device": ["cpu"]}}, "which the runner sets"),
    ({"config": {"seed": 3}}, "use seeds"),
    ({"config": {"out_dir": "x"}}, "which the runner sets"),
    ({"variants": [{"lamb": 1}], "grid": {"lamb": [2]}}, "both set 'lamb'"),
    ({"variants": [{}, {}]}, "are the same run"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, 0]}, "seeds repeat"),
    ({"task": "cifar"}, "task must be one of"),
    ({"name": "../up"}, "name must be"),
    ({"grids": {}}, "unknown key 'grids'"),
    ({"config": {"alpha": 1.5}}, "alpha must be in [0, 1)"),
    ({"base": "configs/modular/missing.yaml"}, "config file not found"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, spec, message):
    with pytest.raises(UserError, match=None) as info:
        load_sweep(sweep_file(tmp_path, **spec))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_cli_reports_a_bad_sweep_in_one_line_with_exit_2(tmp_path):
    path = sweep_file(tmp_path, grid={"lamb": ["big"]})
    result = subprocess.run([sys.executable, "scripts/sweep.py", str(path), "--dry_run"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_a_changed_sweep_refuses_its_old_folder(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, config={"p": 11}, grid={"lamb": [1, 2]}))
    folder = tmp_path / "out"
    store_or_check_spec(sweep, folder)
    store_or_check_spec(sweep, folder)  # the same sweep again: fine
    changed = load_sweep(sweep_file(tmp_path, config={"p": 11, "lr": 0.002}, grid={"lamb": [1, 2]}))
    with pytest.raises(UserError, match=r"holds another sweep \(member 1 \(.*lr0.002.*_s0\): lr was 0.001, now 0.002\)"):
        store_or_check_spec(changed, folder)
    grown = load_sweep(sweep_file(tmp_path, config={"p": 11}, grid={"lamb": [1, 2]}, seeds=[0, 1]))
    with pytest.raises(UserError, match=r"seeds was \[0\], now \[0, 1\]"):
        store_or_check_spec(grown, folder)


SHIPPED = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweeps_expand(path):
    sweep = load_sweep(path)
    if sweep.name == "tiny":
        assert len(sweep.members) == 8 and sweep.members[0].cfg.steps <= 100
        return
    # issue 21's maps: >= 3 seeds, a stated budget of at most 20,000 steps with early stop at 95%; a check
    # of a table's row keeps that row's budget (Table 1's weight-decay control: 300,000)
    budget = {"tf32_wd_control": 300_000}.get(sweep.name, 20_000)
    assert len(sweep.seeds) >= 3 and sweep.task == "modular"
    assert all(m.cfg.budget <= budget and m.cfg.early_stop_acc == 0.95 and m.cfg.early_stop_patience > 0
               for m in sweep.members)
    assert "budget" in path.read_text().lower()


def test_issue_20_benchmark_sweep_is_75_members():
    sweep = load_sweep(REPO / "configs" / "sweeps" / "alpha_lamb_wd0.005.yaml")
    assert len(sweep.members) == 75 and sweep.swept == ("alpha", "lamb")
