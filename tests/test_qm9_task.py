"""main_qm9.py and the QM9 task: device-side batching equals PyG's collation, the reference's model,
split and schedule, an end-to-end CPU run, and the one-line error for missing data."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro.tasks.qm9 import Qm9Config, Qm9Net, Qm9Task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(data_dir):
    return Qm9Task(Qm9Config(data_dir=str(data_dir)), torch.device("cpu"))


def test_config_resolves_the_reference_schedule():
    cfg = Qm9Config()
    assert cfg.budget == 50_000 * 2  # int(100 * 50000 / 100) epochs of ceil(50 / 32) updates
    assert Qm9Config(size=1000).budget == 5_000 * 16
    assert Qm9Config(budget=7).budget == 7
    assert (cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.batch_size) == \
        ("AdamW", 1e-3, 0.9, 0.999, 0.0, 32)


def test_device_batching_equals_pyg_collation(task, data_dir):
    from torch_geometric.data import Batch

    from repro.data.qm9 import load_qm9

    dataset = load_qm9(data_dir, max_molecules=100)
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(1))[:32]
    ours = task.store.gather(ids)
    ref = Batch.from_data_list([dataset[int(i)] for i in ids])
    assert ours.num_graphs == ref.num_graphs == 32
    for name in ("x", "edge_index", "edge_attr", "batch"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert torch.equal(ours.y, ref.y[:, 1:2])
    assert torch.equal(ours.type_attr[ours.edge_type], ref.edge_attr)

    # padded to fixed sizes (as training batches are): the same batch, then padding that touches no graph
    num_nodes, num_edges = ref.num_nodes, ref.edge_index.shape[1]
    padded = task.store.gather(ids, num_nodes + 7, num_edges + 5)
    assert torch.equal(padded.x[:num_nodes], ref.x) and not padded.x[num_nodes:].any()
    assert torch.equal(padded.batch[:num_nodes], ref.batch) and bool((padded.batch[num_nodes:] == 32).all())
    assert torch.equal(padded.edge_index[:, :num_edges], ref.edge_index)
    assert bool((padded.edge_index[:, num_edges:] == num_nodes + 6).all())
    assert torch.equal(padded.edge_attr[:num_edges], ref.edge_attr) and torch.equal(padded.y, ours.y)
    with torch.no_grad():
        torch.testing.assert_close(task.model(padded), task.model(ours), rtol=1e-6, atol=0)


def test_training_batches_are_shuffled_epochs_of_fixed_shape(task):
    epoch = torch.cat([task.train_batch(0), task.train_batch(1)])  # DataLoader(shuffle=True): 32 + 18
    assert sorted(epoch.tolist()) == sorted(task.train_ids.tolist()) and len(task.train_batch(1)) == 18
    assert not torch.equal(task.train_batch(2), task.train_batch(0))  # a new order each epoch
    for num_graphs in (32, 18):  # the padded sizes hold the largest train molecules
        nodes, edges = task.padded_sizes(num_graphs)
        for step in range(0, 200, 2):
            ids = task.train_batch(step + (num_graphs == 18))
            exact_nodes, exact_edges = task.store.sizes(ids)
            assert exact_nodes < nodes and exact_edges < edges


def test_split_model_size_and_init_scale(task):
    assert len(task.train_ids) == len(task.val_ids) == 50
    assert not set(task.train_ids.tolist()) & set(task.val_ids.tolist())
    model = task.model
    # NNConv 1: MLP 4*32+32 + 32*352+352, root 11*32, bias 32; NNConv 2: 160 + 32*512+512, 32*16, 16; 544 + 33
    assert sum(p.numel() for p in model.parameters()) == 30_321
    assert model(task.eval_batch).shape == (100, 1)
    torch.manual_seed(0)
    torch.randperm(100)  # the split's draw, as in the task
    unscaled = Qm9Net()
    for (name, p), q in zip(model.named_parameters(), unscaled.parameters()):
        assert torch.equal(p, 3.0 * q), name


def test_fast_conv_matches_pygs_nnconv(task):
    ids = task.train_batch(0)
    batch = task.store.gather(ids, *task.padded_sizes(len(ids)))
    fast = copy.deepcopy(task.model)
    slow = copy.deepcopy(task.model)
    slow.fast_conv = False
    losses = []
    for model in (fast, slow):
        loss = F.mse_loss(model(batch), batch.y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(losses[0], task.loss(ids), rtol=0, atol=0)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max())), name
    with torch.no_grad():
        torch.testing.assert_close(fast(task.eval_batch), slow(task.eval_batch), rtol=1e-5, atol=1e-3)


def test_evaluation_is_the_per_molecule_mean(task):
    out = task.evaluate(2)
    with torch.no_grad():
        for key, ids in (("train_loss", task.train_ids), ("val_loss", task.val_ids)):
            batch = task.store.gather(ids)
            expect = F.mse_loss(task.model(batch), batch.y)
            torch.testing.assert_close(out[key], expect, rtol=1e-5, atol=0)
    assert set(out) == {"train_loss", "val_loss"}
    assert [s for s in range(1, 9) if task.is_eval_step(s)] == [2, 4, 6, 8]


def test_smoke_run_writes_every_output(tmp_path, data_dir):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "main_qm9.py", "--config", "configs/qm9/grokfast.yaml", "--max_steps", "20",
         "--device", "cpu", "--progress", "false", "--data_dir", str(data_dir), "--out_dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "header.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(2, 21, 2))
    assert all({"train_loss", "val_loss", "elapsed_s"} <= set(r) and "val_acc" not in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["filter"] == "ema" and summary["steps_to_95"] is None
    assert summary["min_val_loss"] == min(r["val_loss"] for r in records)
    assert summary["min_val_loss_step"] in range(2, 21, 2) and summary["final_val_loss"] == records[-1]["val_loss"]
    assert "budget: 100000" in (out / "config.yaml").read_text()


def test_missing_data_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "main_qm9.py", "--max_steps", "2", "--device", "cpu", "--data_dir", str(missing),
         "--out_dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr
    assert not (tmp_path / "run").exists()
