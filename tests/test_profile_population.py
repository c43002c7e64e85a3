"""scripts/profile_population.py on the CPU with a tiny task: it prints and writes the profiler's table."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_tiny_cpu_profile_writes_its_table(tmp_path):
    result = subprocess.run([sys.executable, "scripts/profile_population.py", "--device", "cpu", "--sizes", "2",
                             "--modes", "eager", "--steps", "2", "--rows", "5", "--out_dir", str(tmp_path),
                             "--task_flags", "--p 11 --dim 32 --num_heads 2 --batch_size 32"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "profile_2_fp32_eager.txt").read_text()
    assert table.startswith("# 2 members, fp32, eager: 2 updates after")
    where = table.splitlines()[1]  # what it was measured with
    assert where.startswith("# scripts/profile_population.py --device cpu --sizes 2") and ", commit " in where
    assert "aten::" in table and "Self CPU time total" in table
    assert table in result.stdout
