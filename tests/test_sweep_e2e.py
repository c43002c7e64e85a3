"""The sweep runner end to end on the CPU, with real processes: locally (Ctrl-C, then the same command
finishes the sweep), through a local Ray instance (a member SIGKILLed after its first checkpoint, finished
by a second invocation, its metrics equal to an uninterrupted run's), and the figures of the output.

The sweeps are configs/sweeps/tiny.yaml's members (4 of its 8 here, 40 steps each, to keep this fast).
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from repro.metrics import read_jsonl
from repro.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_sweep(folder: Path, name: str, lambdas=(0.0, 2.0)) -> Path:
    """tiny.yaml with one seed, 40 steps and the given lambdas."""
    spec = yaml.safe_load(TINY.read_text())
    spec.update(name=name, seeds=[0])
    spec["config"]["budget"] = 40
    spec["grid"]["lamb"] = list(lambdas)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(path: Path, alive=lambda: True, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert alive(), f"the sweep ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.005)


def records(run_dir: Path) -> list[dict]:
    """The metrics a run logged, without its timings."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """4 members, two at a time; Ctrl-C once the first has a checkpoint; then the same command again."""
    root = tmp_path_factory.mktemp("local")
    path = smoke_sweep(root, "smoke")
    sweep = load_sweep(path)
    sweep_dir = root / "results" / "sweeps" / "smoke"
    command = [sys.executable, "scripts/sweep.py", str(path), "--devices", "cpu", "--per_device", "2",
               "--results_dir", str(root / "results"), "--progress", "false"]
    runner = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(sweep_dir / sweep.members[0].name / "checkpoint.pt", lambda: runner.poll() is None)
    os.killpg(runner.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the runner and its child
    out, err = runner.communicate(timeout=120)
    interrupted = SimpleNamespace(returncode=runner.returncode, stdout=out, stderr=err,
                                  table=pd.read_csv(sweep_dir / "sweep.csv"))
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return SimpleNamespace(sweep=sweep, dir=sweep_dir, command=command, interrupted=interrupted, finished=finished)


def test_ctrl_c_stops_a_local_sweep_and_the_same_command_finishes_it(local_sweep):
    first = local_sweep.interrupted
    assert first.returncode == 130, first.stderr
    assert "interrupted: run the same command again" in first.stderr
    # the first two had started (the second may not have reached its first step); the others wait
    assert list(first.table["status"][[0, 2, 3]]) == ["interrupted", "pending", "pending"]
    done = local_sweep.finished
    assert done.returncode == 0, done.stderr
    assert "4 members, 0 finished; 4 to run" in done.stdout and "4/4 members finished" in done.stdout
    table = pd.read_csv(local_sweep.dir / "sweep.csv")
    assert list(table["status"]) == ["finished"] * 4 and list(table["steps"]) == [40] * 4
    assert list(table["run"]) == [m.name for m in local_sweep.sweep.members]
    assert list(table["lamb"]) == [0.0, 0.0, 2.0, 2.0] and list(table["weight_decay"]) == [0.1, 1.0, 0.1, 1.0]
    for column in ("seed", "budget", "run_dir", "stopped", "steps_to_95", "best_val_acc", "min_val_loss", "wall_s"):
        assert column in table.columns
    resumed = json.loads((local_sweep.dir / table["run_dir"][0] / "header.json").read_text())
    assert resumed["resumed"][0]["at_step"] >= 10  # the interrupted member went on from its checkpoint
    for member in local_sweep.sweep.members:  # each command's output went to its log
        log = (local_sweep.dir / "logs" / f"{member.name}.log").read_text()
        assert "--progress false --skip_finished true --device cpu" in log and "step 40/40" in log


def test_a_finished_sweep_runs_nothing_again(local_sweep):
    logs = {p: p.read_text() for p in (local_sweep.dir / "logs").iterdir()}
    again = subprocess.run(local_sweep.command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "4 finished; 0 to run" in again.stdout
    assert logs == {p: p.read_text() for p in (local_sweep.dir / "logs").iterdir()}


def test_plot_sweep_draws_the_smoke_sweep(local_sweep):
    plot_sweep = load_script("plot_sweep")
    paths = plot_sweep.plot_sweep(local_sweep.dir, threshold=0.1)
    assert [p.name for p in paths] == ["heatmap_steps_to_10.png", "lines_steps_to_10.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert plot_sweep.main([str(local_sweep.dir), "--x", "alpha"]) == 2  # not swept: one-line error


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # ray.init leaves Ctrl-C ignored
    yield ray
    ray.shutdown()


def pid_of_run(run_dir: Path) -> int | None:
    """The process training into `run_dir` (a child of a Ray worker), from /proc."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--out_dir" in argv and str(run_dir).encode() in argv:
            return int(proc.name)
    return None


def test_ray_sweep_survives_a_member_killed_midway(local_sweep, ray_instance, tmp_path):
    """The local sweep's last two members (never interrupted there) through Ray; one is SIGKILLed after
    its first checkpoint, and a second invocation finishes it with the uninterrupted run's metrics."""
    sweep_main = load_script("sweep").main
    path = smoke_sweep(tmp_path, "smoke_ray", lambdas=[2.0])
    sweep = load_sweep(path)
    sweep_dir = tmp_path / "results" / "sweeps" / "smoke_ray"
    victim = sweep_dir / sweep.members[1].name
    killed = {}

    def kill_after_first_checkpoint():
        wait_for(victim / "checkpoint.pt")
        pid = pid_of_run(victim)
        killed["finished_first"] = (victim / "summary.json").exists()
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    argv = [str(path), "--backend", "ray", "--devices", "cpu", "--results_dir", str(tmp_path / "results"),
            "--progress", "false"]
    assert sweep_main(argv) == 1  # one member did not finish
    killer.join(timeout=10)
    assert killed == {"finished_first": False}
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert list(table["status"]) == ["finished", "started"]
    assert sweep_main(argv) == 0
    assert list(pd.read_csv(sweep_dir / "sweep.csv")["status"]) == ["finished", "finished"]
    for member in sweep.members:
        assert records(sweep_dir / member.name) == records(local_sweep.dir / member.name)
        assert len(records(sweep_dir / member.name)) == 40
