#!/usr/bin/env python3
"""Run the commands on stdin (one per line), N at a time, logging each one's output to LOGDIR/<n>.log.

    python3 scripts/run_commands.py [--jobs N] [--deadline SECONDS] [--logdir DIR] < commands.txt

--deadline: after SECONDS from now, running commands get SIGINT (the engine then saves a checkpoint and a
summary marked "interrupted"; re-running with --skip_finished resumes them), SIGKILL 60 s later if still
running, and no command starts with 10 s or less left.

A command `[env VAR=VAL ...] python SCRIPT.py ARGS` with SCRIPT.py in the repository root (main*.py) runs
in a fork of this process, which imports what the script needs once, before its first command starts
(so the first runs train while a later script's imports load). Started as fresh processes, 42 runs on a
16-core GPU machine wrote their first lines 36-53 s after launch, the CPUs busy importing: each paid for
`import torch` (~5 s of CPU there), torch._dynamo (torch.optim imports it at the first optimizer; 1.4 s
on a faster CPU), matplotlib and, for QM9, torch_geometric (~10 s). A forked run uses this runner's
interpreter, whichever python its line names. Other commands run through the shell. A run gets SIGTERM
if the runner dies first.

One line per finished command: `[ok, 12 s] CMD`, `[exit 2, 1 s] CMD`, or `[skipped, 0 s] CMD: why` for a
run that found its folder already finished (--skip_finished); then a count. Exit status 1 when a command
failed (not counting runs the runner itself interrupted: the deadline, Ctrl-C), else 0.
"""
import argparse
import ctypes
import os
import runpy
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILL_AFTER_S = 60  # after the deadline's SIGINT: time to save a checkpoint
MIN_LEFT_S = 10  # a command whose turn comes with this little time left is not started
PR_SET_PDEATHSIG = 1  # prctl(2)
# read when the interpreter, torch or OpenMP starts, i.e. in this runner before any fork: a command that
# sets one runs as a process
IMPORT_TIME_VARS = ("PYTHON", "OMP_", "MKL_", "TORCH", "LD_")


@dataclass
class Job:
    n: int
    cmd: str
    fork: tuple | None  # (script, args, env) when the command can run in a fork
    pid: int = 0
    start: float = 0.0
    proc: subprocess.Popen | None = None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="commands running at once (default 4)")
    parser.add_argument("--deadline", type=int, default=0,
                        help="seconds from now until running commands are interrupted; 0: none (default)")
    parser.add_argument("--logdir", default="logs", help="folder of the commands' logs, <n>.log (default logs)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def forkable(cmd: str):
    """(script, args, env) when cmd is `[env VAR=VAL ...] python* SCRIPT.py ARGS` with SCRIPT.py in the repo root."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    env = {}
    if words[:1] == ["env"]:
        words = words[1:]
        while words and "=" in words[0] and not words[0].startswith(("-", "=")):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
    if len(words) < 2 or not os.path.basename(words[0]).startswith("python") or any(
            name.startswith(IMPORT_TIME_VARS) for name in env):
        return None
    script = Path(words[1])
    if script.suffix != ".py" or not script.is_file() or script.resolve().parent != REPO:
        return None
    return words[1], words[2:], env


_preloaded: set[str] = set()
_can_fork = True  # False after a preload failed: every later command then runs as a process


def preload(script: str) -> bool:
    """Import, once and before its first fork, what a run of `script` would import; False: run it as a
    process."""
    global _can_fork
    if not _can_fork or script in _preloaded:
        return _can_fork
    _can_fork = False  # until this preload succeeds
    sys.path[0] = str(REPO)  # as for `python main.py`: the scripts import repro/ and grokfast.py from there
    try:
        runpy.run_path(script, run_name="__preload__")  # its work is under `if __name__ == "__main__"`
        import torch
        import torch._dynamo  # noqa: F401  torch.optim imports it at a run's first add_param_group (~3 s)
        import tqdm.auto  # noqa: F401  the engine's progress bar, imported lazily
        import repro.engine  # noqa: F401  repro/cli.py imports it only after parsing the flags
        import repro.plots  # noqa: F401  matplotlib.pyplot with the Agg backend, imported lazily
    except Exception as exc:
        print(f"warning: preloading {script} failed ({type(exc).__name__}: {exc}); running every command "
              "from here on as a process", flush=True)
        return False
    if torch.cuda.is_initialized():  # a CUDA context does not survive a fork
        print("warning: CUDA was initialised while preloading; running every command from here on as a process",
              flush=True)
        return False
    _preloaded.add(script)
    _can_fork = True
    return True


def die_with_runner() -> None:
    """Linux: a run gets SIGTERM (the engine then checkpoints and stops) if the runner dies before it,
    so no run outlives a killed runner on the GPU."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def child(script: str, args: list[str], env: dict, log: Path, signal_mask) -> None:
    """In the forked process: what `python SCRIPT ARGS` would do, output to the log. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # own process group, as for a process: the terminal's Ctrl-C goes to the runner
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)  # a signal sent meanwhile arrives now
        die_with_runner()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update(env)  # CUDA reads its MPS variables when the run creates its context, later
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def start(job: Job, logdir: Path) -> None:
    log = logdir / f"{job.n}.log"
    use_fork = job.fork is not None and preload(job.fork[0])
    job.start = time.monotonic()
    if not use_fork:
        with open(log, "wb") as out:
            job.proc = subprocess.Popen(job.cmd, shell=True, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_runner)
        job.pid = job.proc.pid
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # signals wait until the child has its own handlers: one sent right after the fork would otherwise
    # reach this runner's handler in the child, and be lost
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    job.pid = os.fork()
    if job.pid == 0:
        child(*job.fork, log, mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        os.setpgid(job.pid, job.pid)  # also here: a signal sent right away must find the group
    except OSError:
        pass


def exit_code(job: Job):
    """The finished job's exit status (-N: killed by signal N), or None while it runs."""
    if job.proc:
        return job.proc.poll()
    pid, status = os.waitpid(job.pid, os.WNOHANG)
    return None if pid == 0 else os.waitstatus_to_exitcode(status)


SKIP_PREFIX = "skipped: "  # what an entry point prints when --skip_finished finds a finished run (repro/cli.py)


def skip_reason(log: Path) -> str | None:
    """Why a run that exited 0 did nothing (from its log), or None when it ran."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line[len(SKIP_PREFIX):] for line in lines if line.startswith(SKIP_PREFIX)), None)


def signal_all(running, sig) -> None:
    for job in running:
        try:
            os.killpg(job.pid, sig)  # the group: what the command started gets it too, as with timeout(1)
        except (ProcessLookupError, PermissionError):
            pass


def run(jobs: deque, slots: int, logdir: Path, end: float | None) -> dict:
    """Runs the jobs; returns how many ended ok, skipped, failed and interrupted (by this runner)."""
    counts = {"ok": 0, "skipped": 0, "failed": 0, "interrupted": 0}
    received = []  # the runner's own SIGINT/SIGTERM: forwarded to the runs as SIGINT, then wait for them
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    running, forwarded, interrupted, killed = [], 0, False, False
    while jobs or running:
        now = time.monotonic()
        if len(received) > forwarded:
            forwarded = len(received)
            signal_all(running, signal.SIGINT)
            while jobs:
                print(f"not started (interrupted): {jobs.popleft().cmd}", flush=True)
        if end is not None and now >= end and not interrupted:
            interrupted = True
            signal_all(running, signal.SIGINT)
        if end is not None and now >= end + KILL_AFTER_S and not killed:
            killed = True
            signal_all(running, signal.SIGKILL)
        while jobs and len(running) < slots:
            job = jobs.popleft()
            if end is not None and end - time.monotonic() <= MIN_LEFT_S:  # a preload may have taken a while
                print(f"not started (deadline): {job.cmd}", flush=True)
                continue
            try:
                start(job, logdir)
            except OSError as exc:  # fork refused, log not writable: this command fails, the others go on
                print(f"[error: {exc}] {job.cmd}", flush=True)
                continue
            running.append(job)
        for job in list(running):
            code = exit_code(job)
            if code is not None:
                running.remove(job)
                status = "ok" if code == 0 else f"exit {code}" if code > 0 else f"signal {-code}"
                why = skip_reason(logdir / f"{job.n}.log") if code == 0 else None
                seconds = round(time.monotonic() - job.start)
                if why is not None:
                    counts["skipped"] += 1
                    print(f"[skipped, {seconds} s] {job.cmd}: {why}", flush=True)
                    continue
                if code == 0:
                    counts["ok"] += 1
                elif interrupted or forwarded:
                    counts["interrupted"] += 1
                else:
                    counts["failed"] += 1
                print(f"[{status}, {seconds} s] {job.cmd}", flush=True)
        time.sleep(0.1)
    return counts


def main(argv=None) -> int:
    begin = time.monotonic()  # the deadline counts from here, preloading included
    args = parse_args(argv)
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    lines = [line.rstrip("\n") for line in sys.stdin]
    jobs = deque(Job(n, cmd, forkable(cmd)) for n, cmd in enumerate((c for c in lines if c.strip()), 1))
    counts = run(jobs, args.jobs, logdir, begin + args.deadline if args.deadline > 0 else None)
    print(", ".join(f"{n} {what}" for what, n in counts.items() if n or what in ("ok", "failed"))
          + (f" (logs in {logdir}/)" if counts["failed"] else ""), flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
