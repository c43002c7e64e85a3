"""scripts/bench_population.py on the CPU with a tiny task: the JSON it writes (header, one row per layout of
one structure, the comparison), a layout that fails or crashes its worker costs that layout only, the time
budget skips what does not fit and says so. No timing assertions: the speed goals belong to the benchmark
(run on an H200), not to the tests."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_population.py"
TINY = ["--device", "cpu", "--steps", "3", "--warmup", "2",
        "--task_flags", "--p 11 --dim 32 --num_heads 2 --batch_size 32"]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_population", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_script()


def run_bench(tmp_path, *args, env=None, timeout=240) -> dict:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPT), *TINY, *args, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}" in result.stdout
    return json.loads(out.read_text())


def keyed(record: dict) -> dict:
    return {bench.spec_key(r): r for r in record["rows"]}


def assert_structure(record: dict) -> None:
    header = record["header"]
    for key in ("device", "device_name", "torch", "cuda", "git_commit", "command", "date", "steps", "config"):
        assert key in header, key
    assert header["command"].startswith("scripts/bench_population.py ")
    for row in record["rows"]:
        assert set(bench.ROW_KEYS) <= row.keys(), row
        assert row["layout"] in ("solo", "population", "processes")
        assert row["precision"] in bench.PRECISIONS
        assert isinstance(row["members"], int) and row["members"] >= 1
        measured = not row.get("error") and not row.get("skipped")
        assert not (row.get("error") and row.get("skipped"))
        if measured:
            assert row["run_steps_per_s"] > 0 and row["ms_per_step"] > 0
        else:
            assert row["run_steps_per_s"] is None
    comparison = record["comparison"]
    assert set(comparison["per_precision"]) == {r["precision"] for r in record["rows"]}
    for goal in ("goal_any_precision", "goal_strict_fp32"):
        assert comparison[goal]["status"] in ("met", "not met", "not measured")


def test_tiny_cpu_run_writes_a_row_per_layout(tmp_path):
    # the compile layouts (measured last, by workers of their own) fail here before compiling: a compile
    # takes minutes on a CPU
    faults = "population:2:fp32:compile=raise,population:2:tf32:compile=raise"
    record = run_bench(tmp_path, "--sizes", "1", "2", "--modes", "eager", "compile", "--compile_sizes", "2",
                       "--no_processes", env={bench.FAULT_ENV: faults})
    assert_structure(record)
    assert [bench.spec_key(r) for r in record["rows"]] == [  # one row per layout, in the order measured
        "solo:1:fp32:eager", "solo:1:tf32:eager", "population:1:fp32:eager", "population:2:fp32:eager",
        "population:1:tf32:eager", "population:2:tf32:eager",
        "population:2:fp32:compile", "population:2:tf32:compile"]
    rows = keyed(record)
    for key in ("population:2:fp32:compile", "population:2:tf32:compile"):
        assert rows.pop(key)["error"].startswith("RuntimeError: injected fault")
    for key, row in rows.items():
        assert not row.get("error") and not row.get("skipped"), (key, row)
        assert row["steps"] == 3 and row["warmup_steps"] == 2
        assert row["run_steps_per_s_with_eval"] > 0 and row["batch_assembly_ms"] > 0
        assert row["peak_gpu_mem_mb"] is None  # no GPU: no memory figures, rather than made-up ones
        assert row["tf32_flags"] == {"matmul_allow_tf32": row["precision"] == "tf32",
                                     "cudnn_allow_tf32": row["precision"] == "tf32"}
        # the population layouts train: a finite loss after the timed updates
        assert 0 < row["last_loss_mean"] < 10
    # run-steps per second count members: M * steps / wall
    pop = rows["population:2:fp32:eager"]
    assert pop["run_steps_per_s"] == pytest.approx(2 * 3 / pop["wall_s"], rel=1e-2)
    best = record["comparison"]["per_precision"]["fp32"]["best"]
    assert best["run_steps_per_s"] == max(rows[f"population:{m}:fp32:eager"]["run_steps_per_s"] for m in (1, 2))


def test_a_failed_or_crashed_layout_costs_that_layout_only(tmp_path):
    """A layout that raises is an error row (here its worker then exits, as after an error that breaks the
    CUDA context: a fresh worker measures the rest); one that kills its worker too; the processes layouts
    run main.py and report their summaries; MPS on the CPU is skipped."""
    faults = "solo:1:fp32:eager=broken,population:1:fp32:eager=crash"
    record = run_bench(tmp_path, "--sizes", "1", "2", "--precisions", "fp32", "--processes", "2",
                       "--process_steps", "2", env={bench.FAULT_ENV: faults})
    assert_structure(record)
    rows = keyed(record)
    assert len(rows) == len(record["rows"]) == 5
    assert rows["solo:1:fp32:eager"]["error"].startswith("RuntimeError: injected fault")
    assert "worker exited with code 7" in rows["population:1:fp32:eager"]["error"]
    assert rows["population:2:fp32:eager"]["run_steps_per_s"] > 0  # measured by the next worker
    procs = rows["processes:2:fp32:no_mps"]
    assert not procs.get("error") and procs["steps"] == 2 and procs["run_steps_per_s"] > 0
    assert procs["run_steps_per_s_span"] > 0 and procs["launch_to_exit_s"] > 0
    assert rows["processes:2:fp32:mps"]["skipped"] == "MPS needs CUDA"
    fp32 = record["comparison"]["per_precision"]["fp32"]
    assert fp32["vs_processes_no_mps"] > 0 and fp32["vs_solo"] is None  # no solo figure: no ratio


def test_the_time_budget_skips_layouts_and_records_them(tmp_path):
    record = run_bench(tmp_path, "--sizes", "1", "2", "--processes", "2", "--time_budget_s", "0")
    assert_structure(record)
    assert len(record["rows"]) == 2 + 4 + 2
    assert all(r["skipped"].startswith("time budget") for r in record["rows"]), record["rows"]
    assert record["comparison"]["goal_any_precision"]["status"] == "not measured"


def test_comparison_and_goals_from_the_rows():
    def row(layout, members, precision, mode, rate, with_eval=None, **extra):
        return {**bench.empty_row(dict(layout=layout, members=members, precision=precision, mode=mode)),
                "run_steps_per_s": rate, "run_steps_per_s_with_eval": with_eval, **extra}
    rows = [row("solo", 1, "fp32", "graph", 1000.0), row("solo", 1, "tf32", "graph", 1100.0),
            row("population", 64, "fp32", "graph", 9000.0, 7000.0),
            row("population", 128, "fp32", "compile", 12000.0, 6000.0),
            row("population", 128, "tf32", "graph", 25000.0, 20000.0),
            row("population", 256, "tf32", "graph", None, skipped="out of memory"),
            row("population", 64, "tf32", "compile", 99999.0, error="broken"),  # an error row never counts
            row("processes", 8, "fp32", "no_mps", 700.0), row("processes", 8, "fp32", "mps", 2000.0)]
    c = bench.comparison(rows)
    fp32, tf32 = c["per_precision"]["fp32"], c["per_precision"]["tf32"]
    assert fp32["best"] == {"members": 128, "mode": "compile", "run_steps_per_s": 12000.0}
    assert fp32["vs_solo"] == 12.0 and fp32["vs_processes_mps"] == 6.0
    assert fp32["best_with_eval"]["members"] == 64 and fp32["with_eval_vs_processes_no_mps"] == 10.0
    assert tf32["vs_solo"] == pytest.approx(25000 / 1100, abs=1e-3) and tf32["vs_solo_fp32"] == 25.0
    assert c["goal_any_precision"]["status"] == "met" and c["goal_any_precision"]["best"] == 25000
    assert c["goal_strict_fp32"]["status"] == "met"
    c = bench.comparison([r for r in rows if r["precision"] == "fp32" and r["members"] != 128])
    assert c["goal_any_precision"]["status"] == "not met" and c["goal_strict_fp32"]["status"] == "met"
    assert c["goal_strict_fp32"]["best"] == 9000 and c["goal_strict_fp32"]["layout"] == "population:64:fp32:graph"
    c = bench.comparison([r for r in rows if r["layout"] != "population" or r["members"] == 64])
    assert c["goal_strict_fp32"]["status"] == "met" and c["per_precision"]["tf32"]["best"] is None
    c = bench.comparison([row("population", 8, "fp32", "graph", 5000.0)])
    assert c["goal_strict_fp32"]["status"] == "not met" and c["goal_any_precision"]["status"] == "not met"


def test_every_option_is_explained_and_bad_ones_are_refused(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    for i, line in enumerate(options):  # an option's help follows it on its line, or on the next
        if line.strip().startswith("--"):
            assert "  " in line.strip() or options[i + 1].startswith(" " * 8), line
    assert "--worker" not in text  # internal
    for args, words in ((["--device", "cpu", "--modes", "graph"], "CUDA graphs need --device cuda"),
                        (["--steps", "0"], "--steps must be >= 1"),
                        (["--sizes", "0"], "population sizes must be >= 1"),
                        (["--time_budget_s", "-1"], "--time_budget_s must be >= 0"),
                        (["--config", "nowhere.yaml"], "no such file"),
                        (["--precisions", "fp16"], "invalid choice"),
                        (["--task_flags=--p 1"], "p must be >= 3"),
                        (["--task_flags=--bogus 1"], "unrecognized arguments: --bogus"),
                        (["--task_flags", "--p '11"], "--task_flags")):
        with pytest.raises(SystemExit) as exit_:
            bench.parse_args(args)
        assert exit_.value.code == 2 and words in capsys.readouterr().err, args


def test_engine_mode_builds_the_population_as_the_engine_compiles_it():
    """`engine`: compile and CUDA graphs on, so PopulationStep compiles the loss, evaluation and update
    itself (as the sweeps train); the other modes leave compile off (the compile modes compile the loss)."""
    import torch
    job = {"config": str(REPO / bench.DEFAULT_CONFIG), "device": "cpu",
           "task_flags": ["--p", "11", "--dim", "32", "--num_heads", "2", "--batch_size", "32"]}
    runner, _, _ = bench.build(dict(layout="population", members=2, precision="fp32", mode="engine"), job,
                               torch.device("cpu"))
    assert runner.cfg.compile and runner.cfg.cuda_graphs
    assert hasattr(runner.optimizer.apply, "_torchdynamo_orig_callable")  # compiled, not yet run
    runner, _, _ = bench.build(dict(layout="population", members=2, precision="fp32", mode="eager"), job,
                               torch.device("cpu"))
    assert not runner.cfg.compile and not hasattr(runner.optimizer.apply, "_torchdynamo_orig_callable")
    assert runner.cfg.amp == "none"
    runner, _, _ = bench.build(dict(layout="population", members=2, precision="bf16", mode="eager"), job,
                               torch.device("cpu"))
    assert runner.cfg.amp == "bf16"  # the loss under autocast, as `--amp bf16` trains
