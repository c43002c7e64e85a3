"""The MNIST task: the reference's log grid, model, init, loss conventions, and main_mnist.py end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from repro.config import load_config
from repro.tasks.mnist import MnistConfig, MnistTask, make_mlp, reference_log_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(data_dir):
    return MnistTask(MnistConfig(data_dir=str(data_dir)), torch.device("cpu"))


def _reference_do_log(steps: int, optimization_steps: int) -> bool:
    """Verbatim condition of the reference's main_mnist.py (evaluated when `steps` updates are done)."""
    log_freq = -(-optimization_steps // 150)  # math.ceil(optimization_steps / 150)
    return (steps < 30) or (steps < 150 and steps % 10 == 0) or steps % log_freq == 0


def test_log_grid_is_the_references():
    grid = [s for s in range(1, 100_001) if reference_log_grid(s, 100_000)]
    assert grid[:29] == list(range(1, 30))  # the reference also logs step 0; the engine cannot
    assert grid[29:41] == list(range(30, 150, 10))  # 30, 40, ..., 140
    assert grid[41:] == [667 * k for k in range(1, 150)]  # ceil(1e5 / 150) = 667, last 99383
    assert 44022 in grid and 2001 in grid  # the paper's MNIST step counts
    assert len(grid) == 29 + 12 + 149
    assert all(reference_log_grid(s, 100_000) == _reference_do_log(s, 100_000) for s in range(1, 5000))
    assert [s for s in range(150, 3000) if reference_log_grid(s, 30_000)] == [200 * k for k in range(1, 15)]


def _grid_only_task(cfg: MnistConfig) -> MnistTask:
    """is_eval_step reads only the config: a task without its data (loading MNIST takes seconds)."""
    task = object.__new__(MnistTask)
    task.cfg = cfg
    return task


def test_task_grid_follows_budget_and_adds_eval_every():
    task = _grid_only_task(MnistConfig(max_steps=40))
    assert [s for s in range(1, 2000) if task.is_eval_step(s)] == list(range(1, 30)) + list(range(30, 150, 10)) + [
        667, 1334]  # max_steps does not change the spacing
    finer = _grid_only_task(MnistConfig(eval_every=250))
    assert [s for s in range(150, 1400) if finer.is_eval_step(s)] == [250, 500, 667, 750, 1000, 1250, 1334]
    assert all(finer.is_eval_step(s) for s in range(1, 30))


def test_model_shape_and_reference_names():
    model = make_mlp()
    assert sum(p.numel() for p in model.parameters()) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert [n for n, _ in model.named_parameters()] == [
        "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    assert model(torch.rand(3, 784)).shape == (3, 10)
    assert isinstance(make_mlp(4, 16, "tanh")[2], nn.Tanh) and len(make_mlp(4, 16)) == 8


def test_init_is_the_seeded_default_times_8(task):
    torch.manual_seed(0)
    unscaled = make_mlp()
    for (name, p), q in zip(task.model.named_parameters(), unscaled.parameters()):
        torch.testing.assert_close(p, 8.0 * q, msg=name)
    w = task.model[1].weight
    assert abs(float(w.detach().std()) / float(unscaled[1].weight.detach().std()) - 8.0) < 1e-4


def test_data_batches_and_losses(task):
    assert task.x_train.shape == (1000, 784) and task.x_test.shape == (10_000, 784)
    epoch0 = [task.train_batch(s) for s in range(5)]  # 1000 / 200: five full batches an epoch
    assert all(b.shape == (200,) for b in epoch0)
    assert sorted(torch.cat(epoch0).tolist()) == list(range(1000))
    assert not torch.equal(torch.cat(epoch0), torch.cat([task.train_batch(s) for s in range(5, 10)]))
    assert torch.equal(task.train_batch(3), task.train_batch(3))
    idx = task.train_batch(7)
    one_hots = torch.eye(10, 10)  # the reference's targets and nn.MSELoss()
    expected = nn.MSELoss()(task.model(task.x_train[idx]), one_hots[task.y_train[idx]])
    torch.testing.assert_close(task.loss(idx), expected)


def test_evaluate_matches_the_reference_compute_loss_and_accuracy(task):
    out = task.evaluate(1)
    assert set(out) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert all(v.dim() == 0 for v in out.values())
    one_hots = torch.eye(10, 10)
    with torch.no_grad():
        for x, y, key in ((task.x_train, task.y_train, "train"), (task.x_test, task.y_test, "val")):
            logits = task.model(x)
            loss = nn.MSELoss(reduction="sum")(logits, one_hots[y]) / len(y)  # compute_loss: sum / points
            torch.testing.assert_close(out[f"{key}_loss"], loss, rtol=1e-4, atol=0)
            acc = (logits.argmax(1) == y).float().mean()
            torch.testing.assert_close(out[f"{key}_acc"], acc)


def test_defaults_and_reference_flag_names():
    cfg = load_config(MnistConfig, ["--optimization_steps", "5000", "--initialization_scale", "4",
                                    "--download_directory", "/x", "--loss_function", "CrossEntropy"])
    assert (cfg.budget, cfg.init_scale, cfg.data_dir, cfg.loss_function) == (5000, 4.0, "/x", "CrossEntropy")
    d = MnistConfig()
    assert (d.optimizer, d.lr, d.beta1, d.beta2, d.weight_decay, d.batch_size, d.budget, d.warmup_steps) == (
        "AdamW", 1e-3, 0.9, 0.999, 0.01, 200, 100_000, 0)
    assert (d.train_points, d.depth, d.width, d.init_scale, d.loss_function) == (1000, 3, 200, 8.0, "MSE")
    grokfast = load_config(MnistConfig, ["--config", str(REPO / "configs/mnist/grokfast.yaml")])
    assert (grokfast.filter, grokfast.alpha, grokfast.lamb, grokfast.weight_decay) == ("ema", 0.8, 0.1, 2.0)


def test_smoke_run_writes_every_output(tmp_path, data_dir):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "main_mnist.py", "--config", "configs/mnist/grokfast.yaml", "--max_steps", "40",
         "--device", "cpu", "--progress", "false", "--data_dir", str(data_dir), "--out_dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "header.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (out / name).exists(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 30)) + [30, 40]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "elapsed_s"} <= set(lines[0])
    assert lines[-1]["train_acc"] > lines[0]["train_acc"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["filter"] == "ema" and "best_train_acc" in summary
    assert "mnist" in (out / "config.yaml").read_text()


def test_missing_data_dir_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "no_data_here"
    result = subprocess.run(
        [sys.executable, "main_mnist.py", "--data_dir", str(missing), "--device", "cpu",
         "--out_dir", str(tmp_path / "x")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr
    assert not (tmp_path / "x").exists()
