"""scripts/run_on_gpu.sh checks what a sitting needs before it starts one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_with_rdkit_but_no_metadata(folder: Path) -> Path:
    """An interpreter that imports a module `rdkit` but finds no RDKit package metadata: no site-packages
    (-S), the module from PYTHONPATH, as with a copy of the wheel's files without its dist-info."""
    (folder / "site" / "rdkit").mkdir(parents=True)
    (folder / "site" / "rdkit" / "__init__.py").write_text("")
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={folder / "site"} exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.parametrize("python", ["false", "no_metadata"])
def test_a_sitting_with_qm9_stops_before_it_starts_without_rdkit_and_its_metadata(tmp_path, python):
    # `false` stands for an interpreter that cannot import rdkit: it fails every command it is given
    if python == "no_metadata":
        python = str(_python_with_rdkit_but_no_metadata(tmp_path / "py"))
    results = tmp_path / "results"
    result = subprocess.run(
        ["bash", "scripts/run_on_gpu.sh", "--tables", "mnist qm9", "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": python})
    assert result.returncode == 2 and "qm9 table needs RDKit" in result.stderr
    assert not results.exists()  # no run started, no sitting recorded


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the runs would train on this GPU")
@pytest.mark.parametrize("populations", [False, True])
def test_failed_runs_still_leave_the_sitting_record_and_exit_1(tmp_path, populations):
    # without a GPU every run stops at start (device cuda): a sitting that lost its runs must say so;
    # with --populations (and its defaults) each row's two seeds are one compiled population (MNIST's six
    # runs one), the wd 0.01 controls' set apart and started first
    results = tmp_path / "results"
    tables, seeds = ("mnist modular_ma", "0 1") if populations else ("mnist", "0")
    result = subprocess.run(["bash", "scripts/run_on_gpu.sh", "--tables", tables, "--seeds", seeds, "--results",
                             str(results), *(["--populations"] if populations else [])], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("0 ok, 4 failed" if populations else "0 ok, 3 failed") in result.stdout
    records = list((results / "sittings").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["populations"] is populations
    if populations:
        names = [run.split("populations/population_")[1].split(".yaml")[0] for run in record["runs"]]
        assert names[0].endswith("_wd_ma_s0") and sorted(name[:5] for name in names) == ["mnist"] + ["mul97"] * 3
        assert all(run.endswith(" --compile true") for run in record["runs"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the runs would train on this GPU")
def test_compile_adds_the_flag_to_the_matching_runs_only(tmp_path):
    results = tmp_path / "results"
    result = subprocess.run(["bash", "scripts/run_on_gpu.sh", "--tables", "mnist modular_ema", "--seeds", "0",
                             "--results", str(results), "--compile", r"wd_ema\.yaml"], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1, result.stdout + result.stderr  # no GPU: every run stops at start
    [record] = [json.loads(p.read_text()) for p in (results / "sittings").glob("*.json")]
    compiled = [run for run in record["runs"] if run.endswith(" --compile true")]
    assert len(record["runs"]) == 6 and len(compiled) == 1 and "wd_ema.yaml" in compiled[0]


def test_apart_without_populations_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run(["bash", "scripts/run_on_gpu.sh", "--tables", "mnist", "--apart", "wd", "--results",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--apart needs --populations" in result.stderr
    assert not any(tmp_path.iterdir())
