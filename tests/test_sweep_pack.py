"""Packing members into groups, groups into commands, commands onto devices (no GPU needed)."""
import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from repro.sweep_child import CHILD_ENV
from repro.sweep_pack import (Job, assign_devices, group_commands, group_key, member_bytes, pack, process_bytes,
                              slots, stackable)
from repro.sweep_spec import load_sweep

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


def test_a_task_that_does_not_stack_runs_each_member_alone(tmp_path):
    sweep = load(tmp_path, task="imdb", grid={"lamb": [1.0, 2.0]})
    assert [len(g.members) for g in pack(list(sweep.members), max_members=64)] == [1] * 6


def test_today_a_group_runs_as_one_solo_command_per_member(tmp_path):
    sweep = load(tmp_path, config={"p": 11}, grid={"lamb": [1.0, 2.0]})
    [group] = pack(list(sweep.members), max_members=64)
    jobs = group_commands(sweep, group, tmp_path / "sw")
    assert len(jobs) == 6 and all(len(job.members) == 1 for job in jobs)
    job = assign_devices(jobs, ["cuda:1"])[0]
    member = job.members[0]
    assert job.command == [sys.executable, str(REPO / "main.py"), "--config", str(tmp_path / "sw" / "configs" /
                           f"{member.name}.yaml"), "--out_dir", str(tmp_path / "sw" / member.name),
                           "--progress", "false", "--skip_finished", "true", "--device", "cuda:1"]
    assert job.log == tmp_path / "sw" / "logs" / f"{member.name}.log"


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
    plan = sweep_script().make_plan(sweep, tmp_path, list(sweep.members), ["cuda:0", "cuda:1"], None, 64,
                                    {"cuda:0": 80 * 2**30, "cuda:1": 80 * 2**30})
    assert [j.device for j in plan.jobs].count("cuda:0") == 3 and plan.slots == {"cuda:0": 8, "cuda:1": 8}
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
