"""Kill-and-resume on real data (MNIST, SIGKILL for real), and Ctrl-C (SIGINT / SIGTERM) on main.py:
the cut and resumed run ends with the same metrics.jsonl and summary.json as an uninterrupted one.

Uninterrupted runs and resumes run in-process through the entry points' own function (repro.cli.run;
the same code as a subprocess, without seconds of imports); the runs that get killed are real
processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro import checkpoint as ckpt
from repro.cli import run
from repro.tasks.mnist import MnistConfig, MnistTask
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
TIMING = {"wall_s", "train_step_ms", "wall_per_step_ms", "eval_ms", "time_to_85_s", "time_to_90_s",
          "time_to_95_s", "run"}
# 40 updates of the reference's MNIST setup: evaluations at steps 1-29, 30, 35, 40
MNIST = ["--config", "configs/mnist/grokfast.yaml", "--max_steps", "40", "--eval_every", "5",
         "--checkpoint_every", "10", "--log_every_evals", "1", "--device", "cpu", "--progress", "false"]
MODULAR = ["--config", "configs/modular/ema.yaml", "--p", "23", "--batch_size", "64", "--budget", "200",
           "--dim", "32", "--num_heads", "2", "--num_layers", "1", "--device", "cpu", "--progress", "false",
           "--log_every_evals", "1", "--checkpoint_every", "10"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs/ paths


def strict_json(line: str) -> dict:
    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(line, parse_constant=no_constants)


def comparable(out: Path):
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("elapsed_s")
    summary = json.loads((out / "summary.json").read_text())
    return records, {k: v for k, v in summary.items() if k not in TIMING}


def run_in_process(config_cls, task_cls, args, out, *extra, expect=0):
    assert run(config_cls, task_cls, "", [*args, "--out_dir", str(out), *extra]) == expect


def start_and_wait(script, args, out, min_lines: int) -> subprocess.Popen:
    """Start a real run; return once it has saved a checkpoint and written `min_lines` metrics lines."""
    proc = subprocess.Popen([sys.executable, script, *args, "--out_dir", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.pt").exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= min_lines:
            return proc
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the run ended or stalled before it could be interrupted: {proc.communicate()[1][-2000:]}")


def check_interrupted_run(out: Path, signame: str) -> None:
    """Exit 130 left a summary saying so, complete strict-JSON metrics lines, and a checkpoint of the
    step it stopped at, counting exactly those lines."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"].startswith(f"interrupted ({signame}) at step")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)
    steps = [strict_json(line)["step"] for line in lines]
    assert steps == sorted(set(steps))
    state = ckpt.load(out / "checkpoint.pt", torch.device("cpu"))
    assert state["step"] == summary["steps"] and state["num_records"] == len(lines)
    assert steps[-1] <= state["step"] < 200


def test_mnist_sigkill_then_resume_matches_uninterrupted(tmp_path, data_dir):
    args = [*MNIST, "--data_dir", str(data_dir)]
    run_in_process(MnistConfig, MnistTask, args, tmp_path / "full")
    out = tmp_path / "cut"
    proc = start_and_wait("main_mnist.py", args, out, min_lines=15)  # past the step-10 checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    run_in_process(MnistConfig, MnistTask, args, out, "--resume")
    assert comparable(out) == comparable(tmp_path / "full")
    resumed_at = json.loads((out / "header.json").read_text())["resumed"][0]["at_step"]
    assert resumed_at in (10, 20, 30)


@pytest.fixture(scope="module")
def modular_full(tmp_path_factory):
    out = tmp_path_factory.mktemp("modular") / "full"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        run_in_process(ModularConfig, ModularTask, MODULAR, out)
    finally:
        os.chdir(old)
    return comparable(out)


def test_sigint_saves_a_checkpoint_and_resume_matches(tmp_path, modular_full):
    """Ctrl-C on a real process."""
    out = tmp_path / "cut"
    proc = start_and_wait("main.py", MODULAR, out, min_lines=3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted: resume with the same command plus --resume"
    check_interrupted_run(out, "SIGINT")
    run_in_process(ModularConfig, ModularTask, MODULAR, out, "--resume")
    assert comparable(out) == modular_full  # nothing duplicated, nothing lost


@pytest.mark.parametrize("at_step", [37, 40])  # between checkpoints; on one
def test_sigterm_at_a_given_step(tmp_path, modular_full, monkeypatch, at_step):
    """SIGTERM delivered to this process during update `at_step` (in-process, so the step is exact)."""
    out = tmp_path / "cut"
    real_loss, seen = ModularTask.loss_and_sums, []

    def loss_and_sums(self, batch):  # what the engine calls once per update
        seen.append(1)
        if len(seen) == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(self, batch)

    monkeypatch.setattr(ModularTask, "loss_and_sums", loss_and_sums)
    run_in_process(ModularConfig, ModularTask, MODULAR, out, expect=130)
    check_interrupted_run(out, "SIGTERM")
    assert json.loads((out / "summary.json").read_text())["steps"] == at_step  # stops after that update
    monkeypatch.setattr(ModularTask, "loss_and_sums", real_loss)
    run_in_process(ModularConfig, ModularTask, MODULAR, out, "--resume")
    assert comparable(out) == modular_full
