"""main.py end to end on the CPU: every output file, the task's exact data, the reference's metrics."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro.tasks.modular import Decoder, ModularConfig, ModularTask, modular_equations

REPO = Path(__file__).resolve().parents[1]


def test_equations_are_all_pairs_with_the_right_answers():
    data = modular_equations(97, "mul")
    assert data.shape == (5, 9312)
    x, op, y, eq, c = data
    assert int(y.min()) == 1 and int(x.min()) == 0 and bool((c == x * y % 97).all())
    assert bool((op == 98).all()) and bool((eq == 97).all())
    div = modular_equations(7, "div")
    assert bool(((div[4] * div[2]) % 7 == div[0]).all())


def test_model_has_the_papers_size():
    assert sum(p.numel() for p in Decoder().parameters()) == 422_784


def test_split_is_half_and_disjoint():
    task = ModularTask(ModularConfig(), torch.device("cpu"))
    assert task.train_data.shape[1] == task.val_data.shape[1] == 4656
    train = {tuple(col.tolist()) for col in task.train_data.T}
    assert not train & {tuple(col.tolist()) for col in task.val_data.T}
    assert task.eval_every == 10  # once per epoch: ceil(4656 / 512)


def test_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "main.py", "--config", "configs/modular/ema.yaml", "--max_steps", "30",
         "--out_dir", str(out), "--device", "cpu", "--progress", "false"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "header.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt"):
        assert (out / name).exists(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [10, 20, 30]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "elapsed_s"} <= set(lines[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["filter"] == "ema" and summary["peak_gpu_mem_mb"] is None
    assert summary["train_step_ms"] > 0 and summary["wall_per_step_ms"] > 0
    header = json.loads((out / "header.json").read_text())
    assert header["torch"] == torch.__version__ and "git_commit" in header and "main.py" in header["command"]


def test_bad_flag_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "main.py", "--filter", "fir", "--out_dir", str(tmp_path / "x")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "filter" in result.stderr
    assert not (tmp_path / "x").exists()


def test_answer_only_last_block_is_the_references_full_forward():
    """The last block computes only the answer position; the reference computes every position and keeps
    the last. Same logits and same gradients (to float rounding), in training and evaluation."""
    torch.manual_seed(0)
    model = Decoder()
    tokens = modular_equations(97, "mul")[:, torch.randperm(9312)[:256]]
    for train in (True, False):
        model.train(train)
        grads = []
        for all_positions in (False, True):
            model.zero_grad()
            logits = model(tokens[:4], all_positions=all_positions)
            logits = logits[-1] if all_positions else logits
            torch.nn.functional.cross_entropy(logits, tokens[4]).backward()
            grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
        (trimmed, trimmed_grads), (full, full_grads) = grads
        assert trimmed.shape == (256, 99)
        torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
        for a, b in zip(trimmed_grads, full_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_train_metrics_are_the_epochs_batch_means_before_each_update(tmp_path):
    """As the reference: train loss / accuracy of an epoch = the mean over its batches (weighted by
    size; the last batch is smaller) of each batch's, under the parameters before its update.
    Checked against a plain loop of the reference's updates (Adam, linear warm-up)."""
    from repro.config import load_config
    from repro.engine import Trainer

    # p = 13: 156 equations, 78 train: batches of 32, 32, 14; evaluations after 3, 6, ..., 21 and 22
    cfg = load_config(ModularConfig, ["--p", "13", "--batch_size", "32", "--max_steps", "22", "--device", "cpu",
                                      "--progress", "false", "--out_dir", str(tmp_path / "run")])
    trainer = Trainer(cfg, ModularTask)
    model = copy.deepcopy(trainer.runner.model)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    task = trainer.task
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    expected, loss_sum, correct, count = {}, 0.0, 0, 0
    for step in range(22):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(step / cfg.warmup_steps, 1.0)
        batch = task.train_data[:, task.train_batch(step)]
        logits = model(batch[:4])
        loss = F.cross_entropy(logits, batch[4])
        loss_sum += loss.item() * batch.shape[1]
        correct += int((logits.argmax(-1) == batch[4]).sum())
        count += batch.shape[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 3 == 0 or step + 1 == 22:
            expected[step + 1] = (loss_sum / count, correct / count)
            loss_sum, correct, count = 0.0, 0, 0

    assert [r["step"] for r in records] == list(expected)
    for r in records:
        assert r["train_loss"] == pytest.approx(expected[r["step"]][0], rel=1e-5)
        assert r["train_acc"] == pytest.approx(expected[r["step"]][1], abs=1e-6)
    with torch.no_grad():  # the same end state: the last validation matches the plain loop's model
        logits = model(task.val_data[:4])
    assert records[-1]["val_loss"] == pytest.approx(F.cross_entropy(logits, task.val_data[4]).item(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_graphs_give_the_eager_runs_metrics(tmp_path):
    """The graphed step returns the batch sums beside the loss (one output tensor); its records equal
    an eager run's, also when the graphed run is stopped mid-epoch (after update 25) and resumed: the
    checkpoint carries the epoch's sums so far."""
    from repro.config import load_config
    from repro.engine import Trainer

    def config(name, *extra):
        return load_config(ModularConfig, ["--config", "configs/modular/ema.yaml", "--device", "cuda",
                                           "--progress", "false", "--max_steps", "60",
                                           "--out_dir", str(tmp_path / name), *extra])

    def records(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    Trainer(config("eager", "--cuda_graphs", "false"), ModularTask).run()
    cut = Trainer(config("graphed"), ModularTask)
    train_step = cut.runner.train_step

    def stop_after_update_25(step):
        if step == 24:
            cut.interrupted = "SIGINT"  # as Ctrl-C: the run flushes, checkpoints and stops after this update
        return train_step(step)

    cut.runner.train_step = stop_after_update_25
    assert cut.run()["stopped"].startswith("interrupted") and cut.step == 25
    Trainer(config("graphed", "--resume", "true"), ModularTask).run()
    eager, graphed = records("eager"), records("graphed")
    assert [r["step"] for r in graphed] == [r["step"] for r in eager] == list(range(10, 61, 10))
    for g, e in zip(graphed, eager):
        assert g.keys() == e.keys()
        for key in g:  # eager Adam is not the capturable kind: rounding may flip an answer or two
            tolerance = {"abs": 1e-3} if key.endswith("_acc") else {"rel": 1e-4}
            assert g[key] == pytest.approx(e[key], **tolerance), (g["step"], key)
