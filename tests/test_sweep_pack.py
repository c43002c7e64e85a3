"""Packing members into groups, groups into commands, commands onto devices (no GPU needed)."""
import dataclasses
import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from repro import checkpoint as ckpt
from repro.cli import population_configs, split_population_flags
from repro.config import load_config
from repro.population import MEMBER_FIELDS
from repro.sweep_child import CHILD_ENV
from repro.sweep_pack import (Group, Job, assign_devices, group_commands, group_key, member_bytes, pack,
                              process_bytes, resume_step, resume_steps, slots, stackable, write_job_files)
from repro.sweep_spec import load_sweep, task_classes

REPO = Path(__file__).resolve().parents[1]


def load(tmp_path, task="modular", **spec):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"task": task, "seeds": [0, 1, 2], **spec}))
    return load_sweep(path)


def sweep_script():
    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stackable_tasks():
    assert stackable("modular") and stackable("mnist")
    assert not stackable("imdb") and not stackable("qm9")


def test_members_differing_only_per_member_share_a_group(tmp_path):
    sweep = load(tmp_path, grid={"alpha": [0.9, 0.98], "lamb": [0.0, 2.0], "lr": [1e-3, 2e-3],
                                 "weight_decay": [0.0, 0.01]},
                 variants=[{"filter": "none"}, {"filter": "ema"}])
    groups = pack(list(sweep.members), max_members=1000)
    assert len(groups) == 1 and len(groups[0].members) == 2 * 16 * 3


@pytest.mark.parametrize("grid", [{"dim": [64, 128]}, {"batch_size": [256, 512]}, {"window_size": [50, 100]},
                                  {"optimizer": ["Adam", "SGD"]}, {"budget": [100, 200]}])
def test_shapes_window_optimizer_and_budget_split_groups(tmp_path, grid):
    sweep = load(tmp_path, config={"filter": "ma"}, grid=grid)
    groups = pack(list(sweep.members), max_members=1000)
    assert len(groups) == 2 and all(len(g.members) == 3 for g in groups)
    assert len({group_key(m) for m in groups[0].members}) == 1


def test_ema_and_ma_members_do_not_share_a_group(tmp_path):
    sweep = load(tmp_path, variants=[{"filter": "ema"}, {"filter": "ma"}, {"filter": "none"}])
    sizes = sorted(len(g.members) for g in pack(list(sweep.members), max_members=1000))
    assert sizes == [3, 6]  # none stacks with ema (an unfiltered member is lambda 0)


def test_groups_are_capped_and_split_evenly(tmp_path):
    sweep = load(tmp_path, grid={"alpha": [0.8, 0.9, 0.95, 0.98, 0.99], "lamb": [0.5, 1, 2, 5, 10]})
    members = list(sweep.members)
    assert [len(g.members) for g in pack(members, max_members=64)] == [38, 37]
    assert [len(g.members) for g in pack(members, max_members=25)] == [25, 25, 25]
    # by memory: room for the process and 10 members
    room = process_bytes("cuda") + 10 * member_bytes(members[0], "cuda")
    assert [len(g.members) for g in pack(members, max_members=64, max_bytes=room)] == [10] * 3 + [9] * 5
    assert all(g.members for g in pack(members, max_members=64, max_bytes=1))  # at least one member each


def command_configs(sweep, job: Job) -> list:
    """What the entry point makes of the job's command: each member's config (repro.cli's own parsing)."""
    write_job_files([job])
    rest, overrides = split_population_flags(list(job.command[2:]))
    base = load_config(task_classes(sweep.task)[0], rest)
    return [base] if overrides is None else population_configs(base, overrides)


def as_run(member, sweep_dir: Path, device: str):
    """The config a member's run trains with under the sweep: its own plus the runner's flags."""
    return dataclasses.replace(member.cfg, out_dir=str(sweep_dir / member.name), progress=False,
                               skip_finished=True, device=device)


def test_a_group_of_several_members_runs_as_one_population_command(tmp_path):
    sweep = load(tmp_path, config={"p": 11, "filter": "ema"}, grid={"lamb": [1.0, 2.0]})
    [group] = pack(list(sweep.members), max_members=64)
    sweep_dir = tmp_path / "sw"
    [job] = assign_devices(group_commands(sweep, group, sweep_dir), ["cuda:1"])
    assert job.members == tuple(group.members) and len(job.members) == 6
    name = f"population_{group.members[0].name}"
    base, listing = (sweep_dir / "populations" / f"{name}{ext}" for ext in (".yaml", ".members.yaml"))
    assert job.command == [sys.executable, str(REPO / "main.py"), "--config", str(base), "--population",
                           str(listing), "--progress", "false", "--skip_finished", "true", "--device", "cuda:1"]
    assert job.log == sweep_dir / "logs" / f"{name}.log"
    assert command_configs(sweep, job) == [as_run(m, sweep_dir, "cuda:1") for m in group.members]
    # the shared keys once, in the base; per member only the keys that differ, its seed and its folder
    assert yaml.safe_load(listing.read_text()) == [{"lamb": m.cfg.lamb, "seed": m.seed,
                                                     "out_dir": str(sweep_dir / m.name)} for m in group.members]
    assert yaml.safe_load(base.read_text()) == group.members[0].config_dict()


def test_a_nesterov_population_has_a_valid_base(tmp_path):
    """The entry point validates the base before the members' overrides: Nesterov with the default
    momentum 0 would be refused, so the base carries the first member's momentum."""
    sweep = load(tmp_path, config={"p": 11, "optimizer": "SGD", "nesterov": True}, grid={"momentum": [0.9, 0.98]})
    [group] = pack(list(sweep.members), max_members=64)
    [job] = assign_devices(group_commands(sweep, group, tmp_path), ["cpu"])
    assert command_configs(sweep, job) == [as_run(m, tmp_path, "cpu") for m in group.members]


SHIPPED = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweeps_run_as_populations_of_their_members(tmp_path, path):
    """Every command of every shipped sweep trains exactly its members' configs."""
    sweep = load_sweep(path)
    jobs = assign_devices([job for group in pack(list(sweep.members), max_members=64)
                           for job in group_commands(sweep, group, tmp_path)], ["cuda:0"])
    assert sorted(m.name for job in jobs for m in job.members) == sorted(m.name for m in sweep.members)
    assert all("--population" in job.command for job in jobs)
    for job in jobs:
        assert command_configs(sweep, job) == [as_run(m, tmp_path, "cuda:0") for m in job.members]


def test_momentum_sweep_keeps_heavy_ball_and_nesterov_apart():
    sweep = load_sweep(REPO / "configs" / "sweeps" / "momentum_sgd.yaml")
    nesterov = [m for m in sweep.members if m.cfg.nesterov]
    assert len(sweep.members) == 126 and len(nesterov) == 54
    assert {m.cfg.momentum for m in nesterov} == {0.9, 0.98, 0.99}
    assert {(m.cfg.filter, m.cfg.lr) for m in nesterov} == {(f, lr) for f in ("none", "ema")
                                                           for lr in (0.1, 0.3, 1.0)}
    groups = pack(list(sweep.members), max_members=1000)
    assert sorted(len(g.members) for g in groups) == [54, 72]
    assert all(len({m.cfg.nesterov for m in g.members}) == 1 for g in groups)


@pytest.mark.parametrize("task, config, grid", [
    ("modular", {"p": 11, "amp": "fp16"}, {"lamb": [1.0, 2.0]}),  # the population has no loss scaler
    ("modular", {"p": 11, "grad_accum_steps": 2}, {"lamb": [1.0, 2.0]}),  # nor micro-batches
    ("modular", {"p": 11, "on_nonfinite": "skip"}, {"lamb": [1.0, 2.0]}),  # nor skipped steps
    ("imdb", {}, {"lamb": [1.0, 2.0]}),
])
def test_members_that_do_not_stack_run_alone(tmp_path, task, config, grid):
    sweep = load(tmp_path, task=task, config=config, grid=grid)
    groups = pack(list(sweep.members), max_members=64)
    assert [len(g.members) for g in groups] == [1] * 6
    assert all(len(group_commands(sweep, g, tmp_path)) == 1 for g in groups)


def test_bf16_members_stack_apart_from_fp32_ones(tmp_path):
    """--amp bf16 members train as populations (the loss under autocast); amp is shared, so bf16 and fp32
    members never share one."""
    sweep = load(tmp_path, config={"p": 11}, grid={"amp": ["none", "bf16"], "lamb": [1.0, 2.0]})
    groups = pack(list(sweep.members), max_members=64)
    assert sorted((g.members[0].cfg.amp, len(g.members)) for g in groups) == [("bf16", 6), ("none", 6)]
    assert all(len({m.cfg.amp for m in g.members}) == 1 for g in groups)


def test_a_group_of_one_runs_the_solo_command(tmp_path):
    sweep = load(tmp_path, config={"p": 11}, grid={"lamb": [1.0, 2.0]}, seeds=[0])
    groups = pack(list(sweep.members), max_members=1)
    jobs = assign_devices([job for g in groups for job in group_commands(sweep, g, tmp_path / "sw")], ["cuda:1"])
    assert [len(job.members) for job in jobs] == [1, 1]
    job, member = jobs[0], jobs[0].members[0]
    config = tmp_path / "sw" / "configs" / f"{member.name}.yaml"
    assert job.command == [sys.executable, str(REPO / "main.py"), "--config", str(config), "--out_dir",
                           str(tmp_path / "sw" / member.name), "--progress", "false", "--skip_finished", "true",
                           "--device", "cuda:1"]
    assert job.log == tmp_path / "sw" / "logs" / f"{member.name}.log"
    assert command_configs(sweep, job) == [as_run(member, tmp_path / "sw", "cuda:1")]


def test_a_group_differing_in_a_shared_key_is_refused(tmp_path):
    sweep = load(tmp_path, config={"p": 11}, grid={"batch_size": [64, 128]}, seeds=[0])
    assert "batch_size" not in MEMBER_FIELDS and len(pack(list(sweep.members), max_members=64)) == 2
    with pytest.raises(ValueError, match=r"differ in \['batch_size'\]"):
        group_commands(sweep, Group(list(sweep.members)), tmp_path)


def fake_checkpoint(run_dir: Path, step: int) -> None:
    run_dir.mkdir(parents=True)
    ckpt.save({"config": {}, "step": step, "model": {}, "optimizer": {}, "filter": None, "rng": None,
               "num_records": 0}, run_dir / ckpt.FILENAME)


def test_resume_step_is_the_checkpoints(tmp_path):
    assert resume_step(tmp_path / "none") == 0
    fake_checkpoint(tmp_path / "a", 30)
    assert resume_step(tmp_path / "a") == 30
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ckpt.FILENAME).write_bytes(b"not a checkpoint")
    assert resume_step(tmp_path / "b") == "unreadable b"


def test_members_resuming_at_different_steps_never_share_a_population(tmp_path):
    """Two populations killed at steps 20 and 40 (or one killed while saving its members' checkpoints):
    a re-run packs what is left anew, and a population refuses members at different steps."""
    sweep = load(tmp_path, config={"p": 11}, grid={"lamb": [1.0, 2.0]})
    members = list(sweep.members)
    for m in members[:2]:
        fake_checkpoint(tmp_path / m.name, 20)
    fake_checkpoint(tmp_path / members[2].name, 40)
    steps = resume_steps(tmp_path, members)
    assert list(steps.values()) == [20, 20, 40, 0, 0, 0]
    groups = pack(members, max_members=64, steps=steps)
    assert [[m.name for m in g.members] for g in groups] == [[m.name for m in ms] for ms in
                                                              (members[:2], members[2:3], members[3:])]
    plan = sweep_script().make_plan(sweep, tmp_path, members, ["cpu"], 1, 64, {"cpu": None})
    assert [len(job.members) for job in plan.jobs] == [2, 1, 3]


def job(work: int) -> Job:
    class Member:  # only the steps matter to placement
        class cfg:
            steps = work
    return Job((), (Member,), Path("log"))


def test_jobs_spread_over_devices_by_their_work():
    jobs = assign_devices([job(100) for _ in range(8)], ["cuda:0", "cuda:1"])
    assert [j.device for j in jobs].count("cuda:0") == 4 and [j.device for j in jobs].count("cuda:1") == 4
    jobs = assign_devices([job(1000), job(100), job(100), job(100)], ["cuda:0", "cuda:1"])
    assert [j.device for j in jobs] == ["cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    assert {j.device for j in assign_devices([job(1)] * 3, ["cpu"])} == {"cpu"}


def test_slots_per_device_are_limited_by_memory():
    gib = 2**30
    assert slots("cpu", 4, 10 * gib, None) == 4
    assert slots("cuda:0", 8, 1 * gib, 80 * gib) == 8
    assert slots("cuda:0", 8, 20 * gib, 80 * gib) == 3  # 0.9 * 80 GiB holds 3
    assert slots("cuda:0", 8, 100 * gib, 80 * gib) == 1  # never none: the run says why it cannot fit


def test_plan_spreads_a_sweep_over_two_fake_gpus(tmp_path):
    sweep = load(tmp_path, config={"p": 11}, grid={"lamb": [1.0, 2.0]})
    plan = sweep_script().make_plan(sweep, tmp_path, list(sweep.members), ["cuda:0", "cuda:1"], None, 3,
                                    {"cuda:0": 80 * 2**30, "cuda:1": 80 * 2**30})  # two populations of 3
    assert [(j.device, len(j.members)) for j in plan.jobs] == [("cuda:0", 3), ("cuda:1", 3)]
    assert plan.slots == {"cuda:0": 8, "cuda:1": 8}
    cpu = sweep_script().make_plan(sweep, tmp_path, list(sweep.members), ["cpu"], 2, 64, {"cpu": None})
    assert {j.device for j in cpu.jobs} == {"cpu"} and cpu.slots == {"cpu": 2}


def test_children_keep_nvlink_multicast_off():
    assert CHILD_ENV == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def test_a_child_starts_with_signals_unblocked_and_the_nvlink_settings(tmp_path):
    """A Ray worker blocks SIGINT; its children must not inherit that, or Ctrl-C could not stop them."""
    import signal
    import threading

    from repro.sweep_child import start_child

    log = tmp_path / "child.log"
    code = ("import os, signal; print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), "
            "os.environ['NCCL_NVLS_ENABLE'], os.environ['NVSHMEM_DISABLE_NVLS'])")
    result = {}

    def start_with_sigint_blocked():  # the mask is per thread: block it in this one only
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        result["rc"] = start_child([sys.executable, "-c", code], str(log), str(tmp_path)).wait(timeout=60)

    thread = threading.Thread(target=start_with_sigint_blocked)
    thread.start()
    thread.join()
    assert result["rc"] == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith(shlex.join([sys.executable, "-c", code]))
    assert lines[-1] == "[] 0 1"
