"""scripts/summarize.py on run folders made by real short runs (not hand-written JSON)."""
import json
import statistics
import sys
from pathlib import Path

import pytest

from repro.cli import run
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import summarize  # noqa: E402

SMALL = ["--p", "23", "--batch_size", "64", "--device", "cpu", "--progress", "false", "--eval_every", "10"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two seeds of the baseline and of Grokfast-EMA on a small modulus; no control runs (missing)."""
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        for config, label in (("baseline", "baseline"), ("ema", "grokfast_ema")):
            code = run(ModularConfig, ModularTask, "", [
                "--config", f"{REPO}/configs/modular/{config}.yaml", "--label", label, "--seed", str(seed),
                "--budget", "40", "--results_dir", str(root), *SMALL])
            assert code == 0
    return root


def summaries(root, label):
    return [json.loads(p.read_text()) for p in sorted(root.glob(f"modular/*_{label}_s*/summary.json"))]


def test_tables_show_mean_std_per_seed_and_missing_rows(results):
    out = results / "README.md"
    assert summarize.main(["--results", str(results), "--out", str(out), "--tables", "modular_ema",
                           "--thresholds", "0.05", "0.95"]) == 0
    text = out.read_text()
    table = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(table) == 2  # baseline and Grokfast-EMA; the control row has no runs ...
    assert "No runs here for: wd 0.005 alone (control)." in text  # ... and is named as missing
    # best val acc: mean ± std over the two seeds, as the summaries say, the std to the mean's decimals
    accs = [s["best_val_acc"] for s in summaries(results, "grokfast_ema")]
    places = summarize.decimals(statistics.mean(accs))
    expected = f"{statistics.mean(accs):.{places}f} ± {statistics.stdev(accs):.{places}f} (n=2)"
    assert expected in next(line for line in table if "Grokfast-EMA" in line)
    assert "paper: 910" in text and (results / "figures" / "modular_ema.png").exists()
    assert "(population of" not in text and "the population's" not in text  # solo runs
    # one line per run, linked to its folder
    for s in summaries(results, "grokfast_ema"):
        assert f"[s{s['seed']}](modular/{s['run']})" in text


def test_sensible_precision():
    assert summarize.cell(summarize.aggregate([(304.7, True), (304.7003, True)])) == "305 ± 0 (n=2)"
    assert summarize.cell(summarize.aggregate([(1000, True), (1290, True)]), integer=True) == "1,145 ± 205 (n=2)"
    assert summarize.cell(summarize.aggregate([(0.00527, True), (0.0031, True)])) == "0.00419 ± 0.00153 (n=2)"
    assert summarize.fmt(11.534) == "11.5" and summarize.fmt(0.969) == "0.969" and summarize.fmt(66993.3) == "66,993"


def test_a_foreign_results_folder_gets_only_its_tables_no_notes_and_its_strays_listed(results, tmp_path, capsys):
    """Runs of a user (here: not the committed sitting) get only the tables they have runs in, no notes
    written about the committed runs, and a run that no table takes is listed, not dropped."""
    stray = run(ModularConfig, ModularTask, "", ["--label", "my_idea", "--budget", "5", "--results_dir",
                                                 str(results), *SMALL])
    assert stray == 0
    out = tmp_path / "tables.md"
    try:
        assert summarize.main(["--results", str(results), "--out", str(out)]) == 0
    finally:
        for folder in results.glob("modular/*my_idea*"):
            __import__("shutil").rmtree(folder)
    text = out.read_text()
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert [t.split(" — ")[0] for t in titles] == ["### Table 1", "### Table 2"]  # the baseline is in both
    specs = summarize.load_specs()
    assert all(spec["note"].strip()[:40] not in text for spec in specs.values())
    assert " ".join(text.split()).count("these runs are others, so they are not shown") == 2
    assert "## Runs in no table" in text and "my_idea" in text and "label 'my_idea' is no row" in text
    assert "1 in no table" in capsys.readouterr().out


def test_the_committed_runs_get_their_notes():
    runs = summarize.load_runs(REPO / "results")
    placed, unplaced = summarize.place(runs, summarize.load_specs())
    assert not unplaced and len(placed) == 5
    specs = summarize.load_specs()
    assert all(summarize.notes_apply(specs[tid], rows, REPO / "results") for tid, rows in placed.items())


def test_tables_flag_lists_the_ids_and_refuses_unknown_ones(results, capsys):
    assert summarize.main(["--tables"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(summarize.load_specs())
    with pytest.raises(SystemExit) as info:
        summarize.main(["--results", str(results), "--tables", "table9"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no table table9" in err and "modular_ema" in err


def test_not_reached_is_shown_as_a_bound_never_dropped(results):
    runs = [r for r in summarize.load_runs(results) if r["config"]["label"] == "baseline"]
    values = [summarize.steps_to(r, 0.999) for r in runs]
    assert all(not ok for _, ok in values) and all(v == 40 for v, _ in values)
    cell = summarize.cell(summarize.aggregate(values))
    assert cell.startswith("> 40") and "0/2 reached" in cell


def test_speedup_is_the_ratio_of_means(results):
    runs = summarize.load_runs(results)
    base = [r for r in runs if r["config"]["label"] == "baseline"]
    fast = [r for r in runs if r["config"]["label"] == "grokfast_ema"]
    threshold = min(r["summary"]["best_val_acc"] for r in base + fast)  # every run reaches it
    b = statistics.mean(summarize.steps_to(r, threshold)[0] for r in base)
    f = statistics.mean(summarize.steps_to(r, threshold)[0] for r in fast)
    assert summarize.speedup(base, fast, threshold) == \
        f"speed-up to {threshold:.0%} (baseline mean / Grokfast mean): ×{b / f:.2f}"


def test_missing_results_folder_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        summarize.main(["--results", str(tmp_path / "nope")])
    assert info.value.code == 2 and "no results folder" in capsys.readouterr().err


def test_readme_markers_get_the_tables_and_sittings_count_overlaps_once_per_device(results, tmp_path):
    device = json.loads(next(results.glob("*/*/header.json")).read_text())["device"]
    sittings = results / "sittings"
    sittings.mkdir(exist_ok=True)
    for name, wall, gpu in (("20261124T100000Z_a_s0.json", 100, device),
                            ("20261124T100050Z_b_s0.json", 100, device),
                            ("20261124T120000Z_c_s0.json", 60, "Other GPU")):
        (sittings / name).write_text(json.dumps({"runs": ["x"], "jobs": 2, "wall_s": wall, "device": gpu}))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{summarize.BEGIN}\nold\n{summarize.END}\nbottom\n")
    assert summarize.main(["--results", str(results), "--out", str(results / "tables.md"),
                           "--tables", "modular_ema", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "\nold\n" not in text
    text = " ".join(text.split())  # paragraphs are wrapped
    n_runs = len(list(results.glob("*/*/header.json")))
    # 10:00:00-10:01:40 and 10:00:50-10:02:30 overlap: 2.5 minutes; the runs are matched by their headers' device
    assert n_runs > 0 and (f"on {device}, 2 sittings, 2.5 minutes of GPU wall time, which made {n_runs} of the "
                           "runs below (0 of them resumed after a sitting's deadline; modular)") in text
    assert "on Other GPU, 1 sitting, 1.0 minutes of GPU wall time, which made 0 of the runs below" in text
    link = summarize.relpath(results / "figures" / "modular_ema.png", tmp_path)
    assert f"]({link})" in text and (tmp_path / link).exists()  # links re-based to the README's folder


def test_qm9_variance_is_over_the_runs_own_validation_half(data_dir):
    """The MSE / Var column's denominator: the targets the task validates on (its split, its molecules)."""
    pytest.importorskip("rdkit")
    import torch

    from repro.tasks.qm9 import Qm9Config, Qm9Task

    alphas = summarize.qm9_table(data_dir)
    assert alphas is not None and len(alphas) >= 100
    for seed in (0, 2):
        task = Qm9Task(Qm9Config(data_dir=str(data_dir), seed=seed), torch.device("cpu"))
        train, val = summarize.qm9_split(100, seed)
        assert (train, val) == (task.train_ids.tolist(), task.val_ids.tolist())
        targets = task.store.y[task.val_ids].flatten().double()
        assert torch.allclose(targets, torch.tensor([alphas[i] for i in val], dtype=torch.float64), rtol=1e-6)
        run = {"dir": Path(f"r{seed}"), "summary": {"task": "qm9"}, "config": {"seed": seed, "size": 100, "target": 1}}
        variance = summarize.qm9_variances([run], alphas)[run["dir"]]
        assert variance == pytest.approx(targets.var(unbiased=False).item(), rel=1e-6)


def test_without_the_qm9_table_the_variance_column_says_why(tmp_path):
    assert summarize.qm9_table(tmp_path) is None
    text = summarize.qm9_scale_markdown({}, {}, None, tmp_path)
    assert "not computed" in text and str(tmp_path) in text


def test_overview_is_one_small_table_between_its_markers(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{summarize.OVERVIEW_BEGIN}\nold\n{summarize.OVERVIEW_END}\nbottom\n")
    assert summarize.main(["--results", str(results), "--out", str(results / "tables.md"), "--overview", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "\nold\n" not in text
    table = [line for line in text.splitlines() if line.startswith("| Table")]
    assert table and all(line.count("|") == 6 for line in table)


def test_population_members_are_marked_and_their_shared_timings_said(tmp_path):
    import subprocess
    result = subprocess.run([sys.executable, "main.py", "--config", "configs/modular/ema.yaml", "--label",
                             "grokfast_ema", "--seeds", "0", "1", "--budget", "20", "--results_dir", str(tmp_path),
                             *SMALL], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert summarize.main(["--results", str(tmp_path), "--tables", "modular_ema"]) == 0
    text = " ".join((tmp_path / "README.md").read_text().split())
    assert text.count("(population of 2)") == 2  # each member's line
    assert "its peak GPU memory, ms per iteration and wall times are the population's" in text
