"""scripts/run_commands.py end to end on the CPU: forked and shell commands, the env prefix, the deadline."""
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = shlex.quote(sys.executable)  # the runner must take any python* path as forkable
SMALL = "--device cpu --progress false --p 11"  # mod-11: a step takes milliseconds


def run_commands(commands: list[str], *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GROKFAST_GIT_COMMIT"}
    return subprocess.run([sys.executable, "scripts/run_commands.py", *flags], input="\n".join(commands) + "\n",
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One runner over two good forked runs (one with an env prefix), a shell command, a failing forked run."""
    tmp = tmp_path_factory.mktemp("mixed")
    commands = [
        f"{PY} main.py {SMALL} --max_steps 20 --out_dir {tmp / 'a'}",
        f"""env FOO=bar {PY} -c "import os,sys; sys.exit(0 if os.environ.get('FOO')=='bar' else 5)\"""",
        "",  # blank lines are skipped, not numbered
        f"env GROKFAST_GIT_COMMIT=feedbeef {PY} main.py {SMALL} --max_steps 20 --out_dir {tmp / 'b'}",
        f"{PY} main.py --filter fir --out_dir {tmp / 'bad'}",
    ]
    result = run_commands(commands, "--jobs", "2", "--logdir", str(tmp / "logs"))
    return tmp, [c for c in commands if c], result


def test_runs_forked_and_shell_commands(mixed):
    tmp, commands, result = mixed
    assert result.returncode == 1, result.stderr  # one command failed
    lines = result.stdout.splitlines()
    assert lines[-1] == f"3 ok, 1 failed (logs in {tmp / 'logs'}/)"
    for cmd in commands[:3]:
        assert any(line.startswith("[ok, ") and line.endswith(cmd) for line in lines), (cmd, lines)
    assert any(line.startswith("[exit 2, ") and line.endswith(commands[3]) for line in lines), lines
    for run in ("a", "b"):
        assert json.loads((tmp / run / "summary.json").read_text())["steps"] == 20
    assert sorted(p.name for p in (tmp / "logs").iterdir()) == ["1.log", "2.log", "3.log", "4.log"]
    assert "steps=20" in (tmp / "logs" / "1.log").read_text()
    assert "filter" in (tmp / "logs" / "4.log").read_text()
    assert not (tmp / "bad").exists()


def test_a_skipped_run_says_so_and_all_ok_exits_0(tmp_path):
    once = f"{PY} main.py {SMALL} --max_steps 20 --skip_finished true --out_dir {tmp_path / 'run'}"
    result = run_commands([once, once], "--jobs", "1", "--logdir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[ok, ") and lines[0].endswith(once)
    assert lines[1].startswith("[skipped, ") and f"{once}: {tmp_path / 'run'}" in lines[1], lines
    assert "finished" in lines[1] and lines[-1] == "1 ok, 1 skipped, 0 failed"


def test_env_prefix_reaches_only_its_forked_run(mixed):
    tmp, _, _ = mixed
    assert json.loads((tmp / "b" / "header.json").read_text())["git_commit"] == "feedbeef"
    assert json.loads((tmp / "a" / "header.json").read_text())["git_commit"] != "feedbeef"


def test_deadline_interrupts_with_a_checkpoint_and_starts_nothing_late(tmp_path):
    long = f"{PY} main.py {SMALL} --max_steps 100000 --out_dir {tmp_path / 'long'}"
    late = f"{PY} main.py {SMALL} --max_steps 20 --out_dir {tmp_path / 'late'}"
    began = time.monotonic()
    # 18 s: the deadline counts from the runner's start, preloading included, and a run needs > 10 s left
    result = run_commands([long, late], "--jobs", "1", "--deadline", "18", "--logdir", str(tmp_path / "logs"))
    assert time.monotonic() - began < 45
    assert result.returncode == 0, result.stderr
    assert f"not started (deadline): {late}" in result.stdout.splitlines()
    summary = json.loads((tmp_path / "long" / "summary.json").read_text())
    assert summary["stopped"].startswith("interrupted") and summary["steps"] < 100000
    assert (tmp_path / "long" / "checkpoint.pt").exists()
    assert not (tmp_path / "late").exists()


def test_runs_stop_with_a_checkpoint_when_the_runner_is_killed(tmp_path):
    """SIGKILL to the runner (a CI timeout, say): its forked run gets SIGTERM and saves a checkpoint."""
    out = tmp_path / "orphan"
    env = {k: v for k, v in os.environ.items() if k != "GROKFAST_GIT_COMMIT"}
    runner = subprocess.Popen([sys.executable, "scripts/run_commands.py", "--logdir", str(tmp_path / "logs")],
                              cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    runner.stdin.write(f"{PY} main.py {SMALL} --max_steps 1000000 --log_every_evals 1 --out_dir {out}\n")
    runner.stdin.close()
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.kill()
    runner.wait()
    while not (out / "summary.json").exists() and time.monotonic() < deadline + 30:
        time.sleep(0.1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"].startswith("interrupted (SIGTERM)") and (out / "checkpoint.pt").exists()


def test_which_commands_fork(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_commands", REPO / "scripts" / "run_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(REPO)
    assert module.forkable("env A=1 B='x y' /some/venv/bin/python3 main_qm9.py --seed 0") == (
        "main_qm9.py", ["--seed", "0"], {"A": "1", "B": "x y"})
    assert module.forkable("python main.py") == ("main.py", [], {})
    for cmd in ("python3 -c 'print(1)'", "python3 nothere.py", "python3 scripts/summarize.py",
                "env -i python3 main.py", "env OMP_NUM_THREADS=2 python3 main.py", "sh main.py", "python3 'main.py"):
        assert module.forkable(cmd) is None, cmd
