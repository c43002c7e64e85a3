"""Populations through the entry points: each member logs what its solo run logs, stops on its own
(early stop, non-finite loss) while the others go on, and resumes after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.cli import run
from repro.tasks.mnist import MnistConfig, MnistTask
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--p", "23", "--batch_size", "64", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
         "--device", "cpu", "--progress", "false", "--filter", "ema", "--weight_decay", "0.005"]
# one member with the filter, one without, one with another weight decay and learning rate
MEMBERS = [{"seed": 0}, {"seed": 1, "filter": "none"}, {"seed": 2, "weight_decay": 0.05, "lr": 0.002}]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def member_folders(results: Path, task: str) -> list[Path]:
    return sorted((results / task).iterdir())


def write_members(path: Path, members: list[dict]) -> Path:
    path.write_text("".join(f"- {json.dumps(m)}\n" for m in members))
    return path


def assert_same_records(a: list[dict], b: list[dict], rel: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x.keys() - {"elapsed_s"}:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-7), (x["step"], key)


@pytest.mark.parametrize("config_cls, task_cls, flags", [
    (ModularConfig, ModularTask, SMALL + ["--budget", "300"]),
    (MnistConfig, MnistTask, ["--config", "configs/mnist/grokfast.yaml", "--width", "32", "--budget", "300",
                              "--device", "cpu", "--progress", "false"]),
])
def test_members_log_what_their_solo_runs_log(tmp_path, data_dir, config_cls, task_cls, flags):
    """Over 300 steps to float rounding: the population's batched matmuls (mod-97's batched Decoder, MNIST's
    vmap) round differently from the solo run's (about 1e-7 relative per step); 1e-5 leaves room for the drift
    that training grows from it, far below any real difference (a wrong hyperparameter shows at step 1)."""
    flags = [*flags, "--data_dir", str(data_dir)] if task_cls is MnistTask else flags
    members = write_members(tmp_path / "members.yaml", MEMBERS)
    assert run(config_cls, task_cls, "", [*flags, "--population", str(members), "--results_dir", str(tmp_path / "pop")]) == 0
    for member in MEMBERS:
        solo = [f"--{k}={v}" for k, v in member.items()]
        assert run(config_cls, task_cls, "", [*flags, *solo, "--results_dir", str(tmp_path / "solo")]) == 0
    task = task_cls.name
    pop, solo = member_folders(tmp_path / "pop", task), member_folders(tmp_path / "solo", task)
    assert [p.name for p in pop] == [s.name for s in solo] and len(pop) == 3
    for p, s in zip(pop, solo):
        assert_same_records(records(p), records(s), rel=1e-5)
        header = json.loads((p / "header.json").read_text())
        assert header["population"]["size"] == 3 and header["population"]["members"][header["population"]["index"]] == str(p)


def test_a_member_stops_early_on_its_own(tmp_path):
    """Member 0 (lr 0.01) passes 10% validation accuracy on p = 11 within 600 steps, member 1 (lr 1e-5)
    does not: 0 stops at its own early stop, as its solo run, and its folder ends there; 1 trains on."""
    flags = [*SMALL, "--p", "11", "--batch_size", "32", "--budget", "600", "--lr", "0.01", "--warmup_steps", "0",
             "--early_stop_acc", "0.1", "--early_stop_patience", "1", "--log_every_evals", "1"]
    members = write_members(tmp_path / "m.yaml", [{"seed": 0}, {"seed": 1, "lr": 1e-5}])
    assert run(ModularConfig, ModularTask, "", [*flags, "--population", str(members), "--results_dir", str(tmp_path)]) == 0
    fast, slow = (json.loads((f / "summary.json").read_text()) for f in member_folders(tmp_path, "modular"))
    assert fast["stopped"].startswith("early_stop") and fast["steps"] < 600
    assert slow["stopped"] == "budget" and slow["steps"] == 600
    solo = tmp_path / "solo"
    assert run(ModularConfig, ModularTask, "", [*flags, "--seed", "0", "--out_dir", str(solo)]) == 0
    assert json.loads((solo / "summary.json").read_text())["steps"] == fast["steps"]


def test_a_diverging_member_is_stopped_and_the_others_go_on(tmp_path, capsys):
    """Plain SGD at lr 3 blows up within about ten steps (the exact step moves with float rounding); the
    member at lr 0.1 finishes its 40."""
    flags = [*SMALL, "--filter", "none", "--optimizer", "SGD", "--warmup_steps", "0", "--budget", "40",
             "--eval_every", "1", "--log_every_evals", "1", "--checkpoint_every", "4"]
    members = write_members(tmp_path / "m.yaml", [{"seed": 0, "lr": 3}, {"seed": 0, "lr": 0.1, "label": "calm"}])
    assert run(ModularConfig, ModularTask, "", [*flags, "--population", str(members), "--results_dir", str(tmp_path)]) == 2
    calm, wild = member_folders(tmp_path, "modular")
    stopped = json.loads((wild / "summary.json").read_text())["stopped"]
    assert stopped.startswith("non-finite") and f"{wild}: {stopped}" in capsys.readouterr().err
    assert json.loads((wild / "summary.json").read_text())["steps"] <= 20
    assert json.loads((calm / "summary.json").read_text())["stopped"] == "budget"
    assert [r["step"] for r in records(calm)] == list(range(1, 41))


def test_a_killed_population_resumes_to_the_uninterrupted_metrics(tmp_path):
    flags = [*SMALL, "--budget", "200", "--checkpoint_every", "20", "--log_every_evals", "1"]
    members = write_members(tmp_path / "m.yaml", MEMBERS)
    command = [sys.executable, "main.py", *flags, "--population", str(members)]
    subprocess.run([*command, "--results_dir", str(tmp_path / "full")], cwd=REPO, check=True, capture_output=True)
    proc = subprocess.Popen([*command, "--results_dir", str(tmp_path / "cut")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill for real once every member has a checkpoint and training goes on
        folders = list((tmp_path / "cut" / "modular").glob("*")) if (tmp_path / "cut" / "modular").exists() else []
        if len(folders) == 3 and all((f / "checkpoint.pt").exists() for f in folders) \
                and all(len(records(f)) >= 3 for f in folders):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*command, "--results_dir", str(tmp_path / "cut"), "--resume"], cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for full, cut in zip(member_folders(tmp_path / "full", "modular"), member_folders(tmp_path / "cut", "modular")):
        a, b = records(full), records(cut)
        for r in a + b:
            r.pop("elapsed_s")
        assert a == b  # bitwise on CPU


@pytest.mark.parametrize("flag", [["--amp", "fp16"], ["--grad_accum_steps", "2"], ["--on_nonfinite", "skip"]])
def test_what_a_population_does_not_support_is_refused(tmp_path, capsys, flag):
    code = run(ModularConfig, ModularTask, "", [*SMALL, *flag, "--seeds", "0", "1", "--results_dir", str(tmp_path)])
    assert code == 2 and "a population does not support" in capsys.readouterr().err
    assert not (tmp_path / "modular").exists() or not any((tmp_path / "modular").iterdir())


def test_a_compiled_population_logs_what_the_eager_one_logs(tmp_path):
    """--compile compiles the population's loss, evaluation and update (torch.compile's fusions round a
    little differently: 1e-5 over 30 steps)."""
    members = write_members(tmp_path / "members.yaml", MEMBERS)
    flags = [*SMALL, "--budget", "30", "--population", str(members)]
    for mode in ("eager", "compiled"):
        extra = ["--compile", "true"] if mode == "compiled" else []
        assert run(ModularConfig, ModularTask, "", [*flags, *extra, "--results_dir", str(tmp_path / mode)]) == 0
    for eager, compiled in zip(member_folders(tmp_path / "eager", "modular"),
                               member_folders(tmp_path / "compiled", "modular")):
        assert_same_records(records(compiled), records(eager), rel=1e-5)


def test_bf16_members_follow_their_bf16_solo_runs(tmp_path):
    """--amp bf16: the population's loss runs under autocast as the solo run's does. Early in training the
    losses sit near log(p), so bf16 moves them little: population and solo bf16 runs agree within 1e-3 over
    10 steps (measured: at most 6e-5), as close as bf16 and fp32 are there. Hence the check that autocast
    is on: the bf16 population does not log the fp32 population's losses (without autocast both would run
    the same code, bitwise alike on a CPU)."""
    members = write_members(tmp_path / "members.yaml", MEMBERS)
    flags = [*SMALL, "--budget", "10", "--log_every_evals", "1"]
    for amp in ("bf16", "none"):
        argv = [*flags, "--amp", amp, "--population", str(members), "--results_dir", str(tmp_path / f"pop_{amp}")]
        assert run(ModularConfig, ModularTask, "", argv) == 0
    for member in MEMBERS:
        solo = [*flags, "--amp", "bf16", *(f"--{k}={v}" for k, v in member.items()), "--results_dir", str(tmp_path / "solo")]
        assert run(ModularConfig, ModularTask, "", solo) == 0
    for pop, solo, fp32 in zip(member_folders(tmp_path / "pop_bf16", "modular"), member_folders(tmp_path / "solo", "modular"),
                               member_folders(tmp_path / "pop_none", "modular")):
        assert yaml_amp(pop) == yaml_amp(solo) == "bf16"
        pop_loss, solo_loss, fp32_loss = (records(f)[-1]["train_loss"] for f in (pop, solo, fp32))
        assert pop_loss == pytest.approx(solo_loss, rel=1e-3)
        assert pop_loss != fp32_loss


def yaml_amp(folder: Path) -> str:
    import yaml
    return yaml.safe_load((folder / "config.yaml").read_text())["amp"]


@pytest.mark.parametrize("as_compiled", [False, True])
def test_stopped_members_leave_the_stack_and_the_others_follow_their_solo_runs(tmp_path, monkeypatch, as_compiled):
    """Members 0-2 (lr 0.01) early-stop on p = 11 (10% validation accuracy), member 3 (lr 1e-6) trains on:
    the population drops the stopped ones (one row left; two as a compiled population keeps them, one
    stopped and masked, torch.compile itself left out for speed), and every member logs its solo run's
    metrics."""
    from repro import population_engine
    from repro.config import load_config
    from repro.cli import population_configs
    from repro.population_engine import PopulationTrainer, rows_to_keep
    if as_compiled:
        monkeypatch.setattr(population_engine, "rows_to_keep", lambda done, compiled: rows_to_keep(done, True))

    flags = [*SMALL, "--p", "11", "--batch_size", "32", "--budget", "600", "--lr", "0.01", "--warmup_steps", "0",
             "--early_stop_acc", "0.1", "--early_stop_patience", "1", "--log_every_evals", "1",
             "--results_dir", str(tmp_path / "pop")]
    members = [{"seed": 0}, {"seed": 1}, {"seed": 3}, {"seed": 0, "lr": 1e-6}]
    trainer = PopulationTrainer(population_configs(load_config(ModularConfig, flags), members), ModularTask)
    trainer.run()
    rows = 2 if as_compiled else 1
    assert trainer.population.size == rows and len(trainer.closed) == 4 - rows
    assert trainer.runner.optimizer.state["exp_avg"].shape[0] == trainer.runner.filter.state["ema"].shape[0] == rows
    folders = member_folders(tmp_path / "pop", "modular")
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    assert sorted(s["stopped"].split(":")[0] for s in summaries) == ["budget"] + ["early_stop"] * 3
    assert all(s["population_size"] == 4 for s in summaries)
    for member in members:
        solo = [*flags[:-2], *(f"--{k}={v}" for k, v in member.items()), "--results_dir", str(tmp_path / "solo")]
        assert run(ModularConfig, ModularTask, "", solo) == 0
    for folder, solo in zip(folders, member_folders(tmp_path / "solo", "modular")):
        assert folder.name == solo.name
        assert_same_records(records(folder), records(solo), rel=1e-5)


@pytest.mark.parametrize("population", [False, True])
def test_tf32_is_the_runs_setting_both_ways(tmp_path, population):
    """--tf32 sets torch's CUDA-matmul switch for the run (solo or population), and a run without it turns
    the switch off again whatever the process had set; the choice is kept in each run's config."""
    import torch
    import yaml
    members = ["--population", str(write_members(tmp_path / "m.yaml", MEMBERS[:2]))] if population else []
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for on in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = not on
            results = tmp_path / str(on)
            argv = [*SMALL, "--budget", "2", "--tf32", str(on).lower(), *members, "--results_dir", str(results)]
            assert run(ModularConfig, ModularTask, "", argv) == 0
            assert torch.backends.cuda.matmul.allow_tf32 is on
            for folder in member_folders(results, "modular"):
                assert yaml.safe_load((folder / "config.yaml").read_text())["tf32"] is on
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_rows_to_keep_halves_the_stack_and_a_compiled_one_never_to_a_single_row():
    from repro.population_engine import rows_to_keep
    assert rows_to_keep([False, True, False], compiled=False) is None  # 2 of 3 live: not halved
    assert rows_to_keep([True, False, True, True], compiled=False) == [1]
    assert rows_to_keep([True, False, True, True], compiled=True) == [0, 1]  # a stopped row stays, masked
    assert rows_to_keep([True, False, True], compiled=True) is None  # keeping 2 of 3 halves nothing
    assert rows_to_keep([True] * 6 + [False] * 3, compiled=True) == [6, 7, 8]
    assert rows_to_keep([True, True], compiled=False) == []  # every member stopped (the loop ends there)
