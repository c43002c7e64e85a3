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
    assert len(table) == 3  # baseline, Grokfast-EMA, and the control row that has no runs
    control = next(line for line in table if "control" in line)
    assert "none" in control.split("|")[-2]  # its runs column: no run folders
    # best val acc: mean ± std over the two seeds, as the summaries say
    accs = [s["best_val_acc"] for s in summaries(results, "grokfast_ema")]
    expected = f"{summarize.fmt(statistics.mean(accs))} ± {summarize.fmt(statistics.stdev(accs))} (n=2)"
    assert expected in next(line for line in table if "Grokfast-EMA" in line)
    assert "paper: 910" in text and (results / "figures" / "modular_ema.png").exists()


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
    n_runs = len(list(results.glob("*/*/header.json")))
    # 10:00:00-10:01:40 and 10:00:50-10:02:30 overlap: 2.5 minutes; the runs are matched by their headers' device
    assert n_runs > 0 and (f"on {device}, 2 sittings, 2.5 minutes of GPU wall time, which made {n_runs} of the "
                           "runs below (0 of them resumed after a sitting's deadline; modular)") in text
    assert "on Other GPU, 1 sitting, 1.0 minutes of GPU wall time, which made 0 of the runs below" in text
    link = summarize.relpath(results / "figures" / "modular_ema.png", tmp_path)
    assert f"]({link})" in text and (tmp_path / link).exists()  # links re-based to the README's folder
