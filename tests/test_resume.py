"""Checkpoint and resume: a run cut short and resumed ends exactly like an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config", "configs/modular/ema.yaml", "--p", "23", "--batch_size", "64", "--budget", "60",
        "--device", "cpu", "--progress", "false", "--log_every_evals", "1", "--checkpoint_every", "10"]


def run(out, *extra, check=True):
    result = subprocess.run([sys.executable, "main.py", *ARGS, "--out_dir", str(out), *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def comparable(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("elapsed_s")
    summary = json.loads((out / "summary.json").read_text())
    timing = {"wall_s", "train_step_ms", "wall_per_step_ms", "eval_ms", "time_to_85_s", "time_to_90_s",
              "time_to_95_s", "run"}
    return records, {k: v for k, v in summary.items() if k not in timing}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    run(tmp_path / "full")
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "main.py", *ARGS, "--out_dir", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill for real once a checkpoint exists and training goes on
        if (out / "checkpoint.pt").exists() and (out / "metrics.jsonl").exists() \
                and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    run(out, "--resume")
    assert comparable(out) == comparable(tmp_path / "full")
    header = json.loads((out / "header.json").read_text())
    assert header["resumed"][0]["at_step"] % 10 == 0


def test_existing_run_is_refused_skipped_or_resumed(tmp_path):
    out = tmp_path / "run"
    run(out)
    refused = run(out, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    skipped = run(out, "--skip_finished", "true")
    assert "skipped" in skipped.stdout


def test_resume_with_a_changed_option_is_refused(tmp_path):
    out = tmp_path / "run"
    run(out, "--max_steps", "20")
    changed = run(out, "--resume", "--lamb", "3", check=False)
    assert changed.returncode == 2 and "lamb" in changed.stderr


def test_peak_gpu_memory_covers_every_segment(tmp_path, monkeypatch):
    """A resumed run's peak is the larger of the checkpoint's and this segment's (here a fake CUDA
    device: the counter is patched, the arithmetic is the engine's)."""
    from repro.config import load_config
    from repro import checkpoint as ckpt
    from repro.engine import Trainer
    from repro.tasks.modular import ModularConfig, ModularTask

    cfg = load_config(ModularConfig, [*ARGS, "--out_dir", str(tmp_path / "run")])
    trainer = Trainer(cfg, ModularTask)
    assert trainer._peak_gpu_mem_mb() is None  # CPU
    trainer.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 100 * 2**20)
    assert trainer._peak_gpu_mem_mb() == 100.0  # a fresh run: this segment's
    trainer.previous["peak_gpu_mem_mb"] = 250.0  # as a resume sets it from the checkpoint
    assert trainer._peak_gpu_mem_mb() == 250.0
    trainer.previous["peak_gpu_mem_mb"] = 50.0
    assert trainer._peak_gpu_mem_mb() == 100.0
    # the checkpoint carries the peak, and a resume reads it back
    trainer.device = torch.device("cpu")
    trainer.run()
    path = tmp_path / "run" / "checkpoint.pt"
    state = ckpt.load(path, torch.device("cpu"))
    assert "peak_gpu_mem_mb" in state
    state["peak_gpu_mem_mb"] = 300.0
    ckpt.save(state, path)
    resumed = Trainer(load_config(ModularConfig, [*ARGS, "--budget", "80", "--out_dir", str(tmp_path / "run"),
                                                  "--resume", "true"]), ModularTask)
    assert resumed.previous["peak_gpu_mem_mb"] == 300.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_a_resumed_runs_peak_gpu_memory_equals_an_uninterrupted_ones(tmp_path, peak_gpu_mb):
    """The peak depends on the order of graph captures; a resume must not change it (it did: +160 MB)."""
    gpu = ["--config", "configs/modular/baseline.yaml", "--device", "cuda", "--progress", "false"]
    fresh = peak_gpu_mb("main.py", tmp_path / "fresh", *gpu, "--max_steps", "60")
    peak_gpu_mb("main.py", tmp_path / "cut", *gpu, "--max_steps", "25")  # resumes mid-epoch, between evaluations
    resumed = peak_gpu_mb("main.py", tmp_path / "cut", *gpu, "--max_steps", "60", "--resume")
    assert resumed == pytest.approx(fresh, abs=1.0)
