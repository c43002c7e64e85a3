"""Run one child command with its output in a log file. Standard library only: Ray ships this module to its
workers by value, so they need not import the repository."""
import ctypes
import os
import shlex
import signal
import subprocess
import threading
import time

PR_SET_PDEATHSIG = 1  # prctl(2)
WAKE_S = 0.5
# set in every child's environment: NVLink multicast off (it fails on the lent machines)
CHILD_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _child_setup() -> None:
    """In the child, before it execs: unblock every signal (a Ray worker blocks SIGINT and its children
    would inherit that), and ask for SIGTERM (the engine then checkpoints and stops) when the thread that
    started it dies, so that a killed runner leaves no run writing into a member's folder. Linux only."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_child(argv: list[str], log_path: str, cwd: str) -> subprocess.Popen:
    """Start `argv` with stdout and stderr appended to `log_path` (a rerun's output follows the first's)."""
    with open(log_path, "a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                env={**os.environ, **CHILD_ENV}, preexec_fn=_child_setup)


def run_child(argv: list[str], log_path: str, cwd: str) -> int:
    """Run to the end; on KeyboardInterrupt (Ctrl-C, or Ray cancelling the task) pass SIGINT on, so the run
    saves a checkpoint, and wait for it."""
    if threading.current_thread() is threading.main_thread():
        # Ray's workers ignore SIGINT, and so would their children; its cancel needs the default handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = start_child(argv, log_path, cwd)
    try:
        while True:
            try:
                return proc.wait(timeout=WAKE_S)  # wakes up so that a KeyboardInterrupt can land
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
