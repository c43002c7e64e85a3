"""pyproject.toml: `pip install .` and `pip install -e .` make `import grokfast` work from any folder."""
import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_makes_grokfast_importable_elsewhere(tmp_path, editable):
    # A fresh venv without pip (fast, offline) that sees this interpreter's packages (torch, pip,
    # setuptools) through a .pth file, so nothing is downloaded: only the install itself is tested.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # the build must not leave files in the clone: build from a copy of the files a user's clone holds
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "grokfast.py", "README.md", "requirements.txt"):
        (source / name).write_bytes((REPO / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
               *(["-e"] if editable else []), str(source)]
    result = subprocess.run(install, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = ("import grokfast, torch; m = torch.nn.Linear(2, 1); m(torch.ones(1, 2)).sum().backward(); "
             "grokfast.gradfilter_ema(m); print(grokfast.__file__)")
    result = subprocess.run([python, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    where = Path(result.stdout.strip().splitlines()[-1])
    if editable:
        assert where == source / "grokfast.py"  # the clone's file: edits take effect without reinstalling
    else:
        assert env_dir in where.parents  # a copy in the venv's site-packages
