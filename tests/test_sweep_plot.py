"""plot_sweep on made-up run folders (no training): what the cells say, panels, variants, and the lock."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.sweep_spec import load_sweep, store_or_check_spec
from repro.sweep_table import write_table

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_sweep(tmp_path: Path, reached_at, **spec) -> Path:
    """A finished sweep whose members reach val_acc 1.0 at reached_at(member) (None: never), 100 steps each."""
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump({"task": "modular", "config": {"budget": 100}, **spec}))
    sweep = load_sweep(path)
    sweep_dir = tmp_path / "results" / "sweeps" / "fake"
    store_or_check_spec(sweep, sweep_dir)
    for member in sweep.members:
        run = sweep_dir / member.name
        run.mkdir()
        hit = reached_at(member)
        records = [{"step": s, "val_acc": 1.0 if hit is not None and s >= hit else 0.1} for s in range(10, 101, 10)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "summary.json").write_text(json.dumps({"stopped": "budget", "steps": 100}))
    write_table(sweep, sweep_dir)
    return sweep_dir


@pytest.fixture
def texts(monkeypatch):
    """Every text drawn in the figures plot_sweep saves, by file name."""
    plot_sweep = load_script("plot_sweep")
    drawn = {}
    save = plot_sweep.save

    def recording_save(fig, path):
        drawn[path.name] = [t.get_text() for ax in fig.axes for t in ax.texts] + [fig._suptitle.get_text()]
        return save(fig, path)
    monkeypatch.setattr(plot_sweep, "save", recording_save)
    return plot_sweep, drawn


def test_cells_give_the_median_and_how_many_seeds_reached(tmp_path, texts):
    plot_sweep, drawn = texts
    # lamb 1: both seeds at 20 / 40; lamb 2: seed 0 at 30, seed 1 never; wd 0.1: never
    def reached_at(m):
        if m.cfg.weight_decay == 0.1:
            return None
        return {1.0: 20 + 20 * m.seed, 2.0: None if m.seed else 30}[m.cfg.lamb]
    sweep_dir = fake_sweep(tmp_path, reached_at, grid={"lamb": [1.0, 2.0], "weight_decay": [0.0, 0.1]}, seeds=[0, 1])
    paths = plot_sweep.plot_sweep(sweep_dir, threshold=0.95)
    assert [p.name for p in paths] == ["heatmap_steps_to_95.png", "lines_steps_to_95.png"]
    cells = drawn["heatmap_steps_to_95.png"]
    assert cells[:4] == ["30\n2/2", "> 100\n1/2", "> 100\n0/2", "> 100\n0/2"]  # row wd 0, then wd 0.1
    title = cells[-1]
    assert "x·y mod 97: steps to 95% validation accuracy, 2 seeds per setting" in title
    assert "fixed: filter none, optimizer Adam, learning rate 0.001" in title


def test_a_third_swept_setting_makes_panels(tmp_path, texts):
    plot_sweep, drawn = texts
    sweep_dir = fake_sweep(tmp_path, lambda m: 50, config={"budget": 100, "filter": "ema"},
                           grid={"alpha": [0.9, 0.98], "lamb": [1.0, 2.0], "weight_decay": [0.0, 0.005]}, seeds=[0])
    plot_sweep.plot_sweep(sweep_dir, threshold=0.95, x="lamb", y="alpha")
    assert drawn["heatmap_steps_to_95.png"][:-1] == ["50\n1/1"] * 8  # 2 panels of 2 x 2


def test_variants_that_are_not_a_grid_get_one_axis_of_configurations(tmp_path, texts):
    plot_sweep, drawn = texts
    sweep_dir = fake_sweep(tmp_path, lambda m: 40, variants=[{"optimizer": "SGD", "momentum": 0.9},
                                                             {"optimizer": "Adam", "beta1": 0.98}], seeds=[0, 1, 2])
    paths = plot_sweep.plot_sweep(sweep_dir)
    assert [p.name for p in paths] == ["lines_steps_to_95.png"]
    assert "3 seeds per setting" in drawn["lines_steps_to_95.png"][-1]


def test_a_configuration_label_leaves_out_the_settings_its_filter_ignores(tmp_path, monkeypatch):
    plot_sweep = load_script("plot_sweep")
    labels = {}
    monkeypatch.setattr(plot_sweep, "lines", lambda table, x, *a: labels.setdefault("x", list(table[x])) or [])
    sweep_dir = fake_sweep(tmp_path, lambda m: 40, variants=[{"filter": "none"}, {"filter": "ema", "lamb": 5.0}],
                           seeds=[0])
    plot_sweep.plot_sweep(sweep_dir)
    assert sorted(labels["x"]) == ["filter=ema, lamb=5", "filter=none"]
    labels.clear()  # an --x the variants do not cross with still labels by every setting
    plot_sweep.plot_sweep(sweep_dir, x="filter")
    assert sorted(labels["x"]) == ["filter=ema, lamb=5", "filter=none"]


def test_plot_sweep_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "scripts/plot_sweep.py", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not a sweep folder" in result.stderr


def test_a_second_runner_on_the_same_sweep_refuses(tmp_path):
    sweep_dir = fake_sweep(tmp_path, lambda m: None, grid={"lamb": [1.0]}, seeds=[0])
    sweep_script = load_script("sweep")
    lock = sweep_script.hold_lock(sweep_dir)
    result = subprocess.run([sys.executable, "scripts/sweep.py", str(tmp_path / "fake.yaml"), "--devices", "cpu",
                             "--results_dir", str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    lock.close()
    assert result.returncode == 2 and "another sweep.py is running the sweep in" in result.stderr


def test_variants_crossed_with_a_grid_make_a_heatmap_of_configurations(tmp_path, texts):
    plot_sweep, drawn = texts
    # 2 variants x 2 operations: the ema variant reaches at 30, the plain one never on sub
    def reached_at(m):
        return 30 if m.cfg.filter == "ema" else (None if m.cfg.operation == "sub" else 60)
    # (the variants differ in two settings, so the members are no grid of filter x weight decay x operation)
    sweep_dir = fake_sweep(tmp_path, reached_at, variants=[{"filter": "none", "weight_decay": 0.0},
                                                           {"filter": "ema", "weight_decay": 0.005}],
                           grid={"operation": ["add", "sub"]}, seeds=[0, 1])
    paths = plot_sweep.plot_sweep(sweep_dir)
    assert [p.name for p in paths] == ["heatmap_steps_to_95.png", "lines_steps_to_95.png"]
    cells = drawn["heatmap_steps_to_95.png"]
    # rows (configurations, in the sweep's order): filter=none, weight_decay=0 then filter=ema, weight_decay=0.005
    assert cells[:4] == ["60\n2/2", "> 100\n0/2", "30\n2/2", "30\n2/2"]
    assert cells[-1].startswith("operations mod 97: steps to 95%")
    assert "point: median of the seeds that reached it; bar: their range" in drawn["lines_steps_to_95.png"][-1]

    # members not finished yet (summaries missing) leave their cell blank, not the heatmap out
    sweep = load_sweep(tmp_path / "fake.yaml")
    for member in sweep.members:
        if member.cfg.filter == "none" and member.cfg.operation == "sub":
            (sweep_dir / member.name / "summary.json").unlink()
    write_table(sweep, sweep_dir)
    paths = plot_sweep.plot_sweep(sweep_dir)
    assert [p.name for p in paths] == ["heatmap_steps_to_95.png", "lines_steps_to_95.png"]
    assert drawn["heatmap_steps_to_95.png"][:3] == ["60\n2/2", "30\n2/2", "30\n2/2"]
    assert "2 members not finished, left out" in drawn["heatmap_steps_to_95.png"][-1]
