"""Faults around a run folder: what a crash, a second process or a damaged file leaves behind ends in a
run that continues or in one line (exit 2) with nothing changed; never a traceback or lost data."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro import checkpoint as ckpt
from repro.cli import run
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--p", "23", "--batch_size", "64", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
         "--device", "cpu", "--progress", "false", "--eval_every", "5", "--log_every_evals", "1"]


def main(capsys, out: Path, *flags) -> tuple[int, str]:
    code = run(ModularConfig, ModularTask, "", [*SMALL, "--out_dir", str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def finished(tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    assert main(capsys, out, "--budget", "30", "--checkpoint_every", "10")[0] == 0
    return out


def test_unwritable_run_folder_is_one_line(tmp_path, capsys):
    code, text = main(capsys, Path("/proc/self/grokfast_run"), "--budget", "5")
    assert code == 2 and text.strip().splitlines()[-1].startswith("error: cannot create run folder /proc/self")


def test_a_corrupted_checkpoint_is_refused_and_nothing_changes(finished, capsys):
    path = finished / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # 64 bytes zeroed mid-file
    path.write_bytes(bytes(data))
    before = snapshot(finished)
    code, text = main(capsys, finished, "--budget", "60", "--checkpoint_every", "10", "--resume")
    assert code == 2 and "checksum mismatch" in text and snapshot(finished) == before


def test_a_foreign_checkpoint_is_one_line(finished, capsys):
    torch.save({}, finished / "checkpoint.pt")
    code, text = main(capsys, finished, "--budget", "60", "--resume")
    assert code == 2 and "not a checkpoint of this suite" in text


def test_a_bad_line_mid_log_is_refused_and_a_torn_last_line_dropped(finished, capsys):
    log = finished / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2] + ['{"step": 20, garbage\n'] + lines[3:]))
    before = snapshot(finished)
    code, text = main(capsys, finished, "--budget", "60", "--resume")
    assert code == 2 and "line 3 is not a JSON record" in text and snapshot(finished) == before
    log.write_bytes("".join(lines).encode() + b'{"step": 35, "val\xff')  # torn by a crash mid-write
    assert main(capsys, finished, "--budget", "60", "--resume")[0] == 0
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(5, 61, 5))


def test_skip_finished_with_a_truncated_summary_resumes(finished, capsys):
    (finished / "summary.json").write_text('{"task": "modu')
    code, text = main(capsys, finished, "--budget", "30", "--checkpoint_every", "10", "--skip_finished")
    assert code == 0 and json.loads((finished / "summary.json").read_text())["steps"] == 30


def test_resume_without_a_header_starts_a_new_one(finished, capsys):
    (finished / "header.json").unlink()
    assert main(capsys, finished, "--budget", "40", "--resume")[0] == 0
    header = json.loads((finished / "header.json").read_text())
    assert "missing" in header["note"] and header["resumed"][0]["at_step"] == 30


def test_resuming_a_finished_run_with_a_smaller_budget_says_so(finished, capsys):
    code, text = main(capsys, finished, "--budget", "30", "--max_steps", "20", "--resume")
    assert code == 0 and "already trained 30 steps, at least the 20 asked for" in text


def test_timing_covers_every_segment(finished, capsys):
    first = json.loads((finished / "summary.json").read_text())
    assert main(capsys, finished, "--budget", "60", "--checkpoint_every", "10", "--resume")[0] == 0
    second = json.loads((finished / "summary.json").read_text())
    assert second["eval_ms"] is not None and second["wall_s"] > first["wall_s"]
    state = ckpt.load(finished / "checkpoint.pt", torch.device("cpu"))
    assert state["timer"][1] == 60 and state["eval_timer"][1] == 12  # steps and evaluations of both segments


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(capsys, out, "--budget", "10")[0] == 0
    (out / "checkpoint.pt").unlink()
    (out / "summary.json").unlink()  # as a kill before the first checkpoint leaves it
    for flags in ([], ["--resume"], ["--skip_finished"]):
        code, text = main(capsys, out, "--budget", "10", *flags)
        assert code == 0 and "holds an unfinished run with no checkpoint (2 logged evaluations): starting it afresh" in text
        (out / "checkpoint.pt").unlink()
        (out / "summary.json").unlink()


def test_resume_of_nothing_writes_nothing(tmp_path, capsys):
    code, text = main(capsys, tmp_path / "none", "--resume")
    assert code == 2 and "no run" in text and not (tmp_path / "none").exists()


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "main.py", *SMALL, "--budget", "100000", "--out_dir", str(out)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip() == f"error: {out} is in use by another running process"
    finally:
        first.kill()
        first.wait()
    # the lock died with its process: the killed run resumes (from scratch: no checkpoint yet)
    resumed = subprocess.run([*command[:-4], "--budget", "10", "--out_dir", str(out), "--resume"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
