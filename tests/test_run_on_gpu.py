"""scripts/run_on_gpu.sh checks what a sitting needs before it starts one."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_sitting_with_qm9_stops_before_it_starts_when_rdkit_does_not_import(tmp_path):
    # `false` stands for an interpreter that cannot import rdkit: it fails every command it is given
    result = subprocess.run(
        ["bash", "scripts/run_on_gpu.sh", "--tables", "mnist qm9", "--results", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": "false"})
    assert result.returncode == 2 and "qm9 table needs RDKit" in result.stderr
    assert not any(tmp_path.iterdir())  # no run started, no sitting recorded
