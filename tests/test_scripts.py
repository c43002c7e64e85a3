"""The shell scripts as a user meets them: --help, bad options, where runs go, skipped runs on the terminal."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE_SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("reproduce_*.sh"))
COMMANDS = TABLE_SCRIPTS + ["run_on_gpu.sh"]  # common.sh is sourced, not run


def bash(script: str, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", f"scripts/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.parametrize("script", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_script_answers_help_with_its_usage(script, flag):
    # called by a relative path from another folder than the repository's (the scripts cd there)
    result = subprocess.run(["bash", f"./{script}", flag], cwd=REPO / "scripts", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    first_comment = (REPO / "scripts" / script).read_text().splitlines()[1].lstrip("# ")
    assert result.stdout.startswith(first_comment)  # the script's own header says what it does
    assert script in result.stdout  # and how to call it
    if script.startswith("reproduce_"):
        assert "--results DIR" in result.stdout and "default runs" in result.stdout


@pytest.mark.parametrize("script", ["reproduce_mnist.sh", "reproduce_all.sh", "run_on_gpu.sh"])
def test_bad_options_are_one_line_errors(script):
    for args, words in ((["--bogus"], "unknown option: --bogus"), (["--seeds"], "--seeds needs a value")):
        result = bash(script, *args)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_runs_go_to_the_scratch_folder_unless_results_are_asked_for():
    default = bash("reproduce_qm9.sh", "--print", "--seeds", "0").stdout.splitlines()
    assert len(default) == 3 and all("--results_dir runs " in cmd for cmd in default), default
    for flag in ("--results", "--results_dir"):
        asked = bash("reproduce_qm9.sh", "--print", "--seeds", "0", flag, "results").stdout.splitlines()
        assert all("--results_dir results " in cmd for cmd in asked), asked
    # the scratch folder is never committed
    assert subprocess.run(["git", "check-ignore", "-q", "runs/modular/x/summary.json"], cwd=REPO).returncode == 0


def test_a_rerun_skips_its_finished_runs_and_says_so_on_the_terminal(tmp_path):
    args = ["--seeds", "0", "--device", "cpu", "--jobs", "3", "--results", str(tmp_path), "--",
            "--max_steps", "3", "--p", "11"]
    first = bash("reproduce_modular_ema.sh", *args, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("[ok, ") == 3 and "3 ok, 0 failed" in first.stdout, first.stdout
    again = bash("reproduce_modular_ema.sh", *args, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = [line for line in again.stdout.splitlines() if line.startswith("[skipped, ")]
    assert len(skipped) == 3 and all("already holds a finished run" in line for line in skipped), again.stdout
    assert "0 ok, 3 skipped, 0 failed" in again.stdout


def test_a_failing_run_fails_the_script(tmp_path):
    result = bash("reproduce_mnist.sh", "--seeds", "0", "--device", "cpu", "--results", str(tmp_path), "--",
                  "--filter", "fir", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 ok, 3 failed" in result.stdout and result.stdout.count("[exit 2, ") == 3


def test_reproduce_all_summarizes_the_results_folder_it_wrote(tmp_path):
    """A stand-in python records what it is asked to run: the runner for each table, then summarize.py
    over the same --results folder."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat > /dev/null\n')
    fake.chmod(0o755)
    result = bash("reproduce_all.sh", "--seeds", "0", "--results", str(tmp_path / "mine"), env={"PYTHON": str(fake)})
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 6 and all(line.startswith("scripts/run_commands.py") for line in lines[:5]), lines
    assert lines[-1].endswith(f"summarize.py --results {tmp_path / 'mine'}")


@pytest.mark.parametrize("script", ["summarize.py", "plot_runs.py", "run_commands.py", "bench_filter.py"])
def test_python_scripts_explain_every_option(script):
    result = subprocess.run([sys.executable, f"scripts/{script}", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\noptions:\n", 1)[1].splitlines()
    for i, line in enumerate(lines):  # an option's help follows it on its line, or on the next for a long one
        if line.strip().startswith("--"):
            has_help = "  " in line.strip() or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 8)
                                                 and not lines[i + 1].strip().startswith("-"))
            assert has_help, f"{script}: {line.strip()} has no help"
