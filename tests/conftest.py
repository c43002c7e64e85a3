"""Shared fixtures: the real data folder, a throw-away cache folder for the whole session, and a run's
peak GPU memory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# One thread per process: the suite runs on 2 shared cores, where torch's default oversubscribes
# (subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Point $GROKFAST_CACHE_DIR at a session temp folder so tests never write into the repo or home."""
    old = os.environ.get("GROKFAST_CACHE_DIR")
    os.environ["GROKFAST_CACHE_DIR"] = str(tmp_path_factory.mktemp("grokfast_cache"))
    yield Path(os.environ["GROKFAST_CACHE_DIR"])
    if old is None:
        os.environ.pop("GROKFAST_CACHE_DIR", None)
    else:
        os.environ["GROKFAST_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data: $GROKFAST_DATA_DIR, else <repo>/../shared/data; skipped when neither exists."""
    env = os.environ.get("GROKFAST_DATA_DIR")
    if env:
        if not Path(env).is_dir():
            pytest.skip(f"GROKFAST_DATA_DIR={env} is not a directory")
        return Path(env)
    shared = REPO.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    pytest.skip(f"no real data: set GROKFAST_DATA_DIR or provide {shared}")


@pytest.fixture
def peak_gpu_mb():
    """Runs an entry point (`main.py`, ...) to the end in a fresh process and returns its summary's peak
    GPU memory in MB: a fresh process, so that no earlier test's allocations count."""
    def run(script: str, out: Path, *args: str) -> float:
        result = subprocess.run([sys.executable, script, *args, "--out_dir", str(out)],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads((out / "summary.json").read_text())["peak_gpu_mem_mb"]
    return run
