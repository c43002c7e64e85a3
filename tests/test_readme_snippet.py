"""The README's grokfast.py snippet runs as pasted, in a folder of its own, importing the installed-style
module from the repository root."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = "## The filter: `grokfast.py`"


def filter_snippet() -> str:
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the filter section should hold one python block"
    return blocks[0]


def test_readme_filter_snippet_runs_as_pasted(tmp_path):
    (tmp_path / "snippet.py").write_text(filter_snippet())
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # as if grokfast.py were copied or pip-installed
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ckpt.pt").exists()  # the checkpoint it says it saves
