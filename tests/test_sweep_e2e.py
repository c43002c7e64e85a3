"""The sweep runner end to end on the CPU, with real processes: the smoke sweep's members train as one
population; locally (Ctrl-C, then the same command finishes the sweep), through a local Ray instance (the
population SIGKILLed after its first checkpoint, finished by a second invocation), each member ending with
the uninterrupted population's metrics exactly; a population command whose members partly finished; and
the figures of the output.

The sweeps are configs/sweeps/tiny.yaml's members (4 of its 8 here, 40 steps each, to keep this fast).
"""
import importlib.util
import json
import os
import shutil
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

from repro.cli import run
from repro.metrics import read_jsonl
from repro.sweep_spec import load_sweep
from repro.tasks.modular import ModularConfig, ModularTask

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


def population_log(sweep_dir: Path) -> Path:
    [log] = (sweep_dir / "logs").iterdir()  # one command: the population
    return log


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke sweep run uninterrupted: its folder."""
    root = tmp_path_factory.mktemp("reference")
    path = smoke_sweep(root, "smoke")
    argv = [str(path), "--devices", "cpu", "--results_dir", str(root / "results"), "--progress", "false"]
    assert load_script("sweep").main(argv) == 0
    return root / "results" / "sweeps" / "smoke"


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """4 members in one population; Ctrl-C once the first has a checkpoint; then the same command again."""
    root = tmp_path_factory.mktemp("local")
    path = smoke_sweep(root, "smoke")
    sweep = load_sweep(path)
    sweep_dir = root / "results" / "sweeps" / "smoke"
    command = [sys.executable, "scripts/sweep.py", str(path), "--devices", "cpu", "--results_dir",
               str(root / "results"), "--progress", "false"]
    # as started from a terminal: a background job of a non-interactive shell (pytest run as `... &`) starts
    # with SIGINT ignored, the runner would inherit that and only its child would see the Ctrl-C
    runner = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(sweep_dir / sweep.members[0].name / "checkpoint.pt", lambda: runner.poll() is None)
    os.killpg(runner.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the runner and its child
    out, err = runner.communicate(timeout=120)
    interrupted = SimpleNamespace(returncode=runner.returncode, stdout=out, stderr=err,
                                  table=pd.read_csv(sweep_dir / "sweep.csv"))
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return SimpleNamespace(sweep=sweep, dir=sweep_dir, command=command, interrupted=interrupted, finished=finished)


def test_ctrl_c_stops_a_local_sweep_and_the_same_command_finishes_it(local_sweep, reference):
    first = local_sweep.interrupted
    assert first.returncode == 130, first.stderr
    assert "4 members, 0 finished; 4 to run in 1 groups as 1 commands" in first.stdout
    assert "interrupted: run the same command again" in first.stderr
    assert list(first.table["status"]) == ["interrupted"] * 4  # one population: every member saved and stopped
    done = local_sweep.finished
    assert done.returncode == 0, done.stderr
    assert "4 members, 0 finished; 4 to run in 1 groups as 1 commands" in done.stdout
    assert "4/4 members finished" in done.stdout
    table = pd.read_csv(local_sweep.dir / "sweep.csv")
    assert list(table["status"]) == ["finished"] * 4 and list(table["steps"]) == [40] * 4
    assert list(table["run"]) == [m.name for m in local_sweep.sweep.members]
    assert list(table["lamb"]) == [0.0, 0.0, 2.0, 2.0] and list(table["weight_decay"]) == [0.1, 1.0, 0.1, 1.0]
    for column in ("seed", "budget", "run_dir", "stopped", "steps_to_95", "best_val_acc", "min_val_loss", "wall_s"):
        assert column in table.columns
    at = set()
    for member in local_sweep.sweep.members:  # each went on from its checkpoint, all from the same step
        header = json.loads((local_sweep.dir / member.name / "header.json").read_text())
        assert header["population"]["size"] == 4
        at.add(header["resumed"][0]["at_step"])
        assert records(local_sweep.dir / member.name) == records(reference / member.name)
    assert len(at) == 1 and at.pop() >= 10
    log = population_log(local_sweep.dir).read_text()  # both commands' output went to the population's log
    assert log.count("--population") == 2 and log.count("--progress false --skip_finished true --device cpu") == 2
    assert "step 40/40" in log


def test_a_finished_sweep_runs_nothing_again(local_sweep):
    logs = {p: p.read_text() for p in (local_sweep.dir / "logs").iterdir()}
    again = subprocess.run(local_sweep.command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "4 finished; 0 to run" in again.stdout
    assert logs == {p: p.read_text() for p in (local_sweep.dir / "logs").iterdir()}


def test_a_population_command_skips_its_finished_members(reference, tmp_path):
    """The sweep leaves finished members out of its groups; should a population still hold some (one that
    stopped early, say), its command trains the others and leaves them be."""
    [listing] = (reference / "populations").glob("*.members.yaml")
    base = listing.with_name(listing.name.replace(".members.yaml", ".yaml"))
    members = yaml.safe_load(listing.read_text())
    copies = []
    for i, member in enumerate(members):
        copy = tmp_path / Path(member["out_dir"]).name
        if i < 2:  # these two finished
            shutil.copytree(member["out_dir"], copy)
        member["out_dir"] = str(copy)
        copies.append(copy)
    listing = tmp_path / "members.yaml"
    listing.write_text(yaml.safe_dump(members))
    kept = {p: p.stat().st_mtime_ns for p in copies[0].iterdir()}
    argv = ["--config", str(base), "--population", str(listing), "--progress", "false", "--skip_finished", "true",
            "--device", "cpu"]
    assert run(ModularConfig, ModularTask, "", argv) == 0
    assert kept == {p: p.stat().st_mtime_ns for p in copies[0].iterdir()}
    for copy in copies:
        assert records(copy) == records(reference / copy.name)
        assert json.loads((copy / "header.json").read_text())["population"]["size"] == (4 if copy in copies[:2] else 2)


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


def pid_of_population(sweep_dir: Path) -> int | None:
    """The process training the sweep's population (a child of a Ray worker), from /proc."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--population" in argv and any(arg.startswith(str(sweep_dir).encode()) for arg in argv):
            return int(proc.name)
    return None


def test_ray_sweep_survives_a_population_killed_midway(reference, ray_instance, tmp_path):
    """The smoke sweep through Ray: its population is SIGKILLed once every member has its first checkpoint,
    and a second invocation finishes every member with the uninterrupted population's metrics. (Killed while
    it saves its members' checkpoints one after the other, the members would resume at different steps: the
    re-run then packs them apart, test_sweep_pack, and a member resumed in a smaller group or alone may
    differ from the uninterrupted one by float rounding.)"""
    sweep_main = load_script("sweep").main
    path = smoke_sweep(tmp_path, "smoke")
    sweep = load_sweep(path)
    sweep_dir = tmp_path / "results" / "sweeps" / "smoke"
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 180
        while (pid := pid_of_population(sweep_dir)) is None:
            assert time.monotonic() < deadline, "the population did not start"
            time.sleep(0.01)
        for member in sweep.members:  # saved in this order
            wait_for(sweep_dir / member.name / "checkpoint.pt")
        os.kill(pid, signal.SIGKILL)
        killed["finished_first"] = any((sweep_dir / m.name / "summary.json").exists() for m in sweep.members)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    argv = [str(path), "--backend", "ray", "--devices", "cpu", "--results_dir", str(tmp_path / "results"),
            "--progress", "false"]
    assert sweep_main(argv) == 1  # no member finished
    killer.join(timeout=10)
    assert killed == {"finished_first": False}
    assert list(pd.read_csv(sweep_dir / "sweep.csv")["status"]) == ["started"] * 4
    assert sweep_main(argv) == 0
    assert list(pd.read_csv(sweep_dir / "sweep.csv")["status"]) == ["finished"] * 4
    log = population_log(sweep_dir).read_text()  # one population, resumed as one
    assert log.count("--population") == 2 and log.count("population of 4 in") == 2
    for member in sweep.members:
        assert records(sweep_dir / member.name) == records(reference / member.name)
        assert len(records(sweep_dir / member.name)) == 40
