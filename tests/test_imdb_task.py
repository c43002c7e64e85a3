"""The IMDb task: the reference's model and loop, both validation protocols, main_imdb.py end to end."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.config import load_config
from repro.tasks.imdb import ImdbConfig, ImdbTask, SentimentLSTM

REPO = Path(__file__).resolve().parents[1]
SHORT = 20  # sequence length for tests that run the LSTM on the CPU (500 costs seconds per step)


@pytest.fixture(scope="module")
def task(data_dir):
    return ImdbTask(ImdbConfig(data_dir=str(data_dir), seq_len=SHORT, max_steps=30), torch.device("cpu"))


def test_model_has_the_reference_size_and_output():
    model = SentimentLSTM(1001)
    # embedding 1001x64; LSTM layer 1: 4*256*(64+256) + 2*4*256, layer 2: 4*256*(256+256) + 2*4*256; fc 257
    assert sum(p.numel() for p in model.parameters()) == 64_064 + 329_728 + 526_336 + 257 == 920_385
    prob = model(torch.randint(0, 1001, (3, 7)))
    assert prob.shape == (3,) and bool(((prob > 0) & (prob < 1)).all())


def test_last_step_head_equals_the_reference_all_steps_head():
    torch.manual_seed(0)
    model = SentimentLSTM(50, embedding_dim=8, hidden_dim=16)
    tokens = torch.randint(0, 50, (4, 9))
    zeros = torch.zeros(2, 4, 16)
    out, _ = model.lstm(model.embedding(tokens), (zeros, zeros))  # reference: fc on every step, keep the last
    reference = torch.sigmoid(model.fc(out.contiguous().view(-1, 16))).view(4, -1)[:, -1]
    torch.testing.assert_close(model(tokens), reference)


def test_task_data_model_and_init_scale(task):
    assert task.x_train.shape == (750, SHORT) and task.x_val.shape == (250, SHORT)
    assert task.vocab_size == 1001 and task.model.embedding.num_embeddings == 1001
    torch.manual_seed(0)
    unscaled = SentimentLSTM(1001)
    for (name, p), q in zip(task.model.named_parameters(), unscaled.parameters()):
        torch.testing.assert_close(p, 6.0 * q, msg=name)


def test_train_batches_are_reshuffled_epochs_of_50(task):
    epoch0 = [task.batches(s) for s in range(15)]
    assert all(len(b) == 50 for b in epoch0)
    assert sorted(torch.cat(epoch0).tolist()) == list(range(750))
    assert not torch.equal(torch.cat(epoch0), torch.cat([task.batches(s) for s in range(15, 30)]))
    batch = task.train_batch(3)  # one tensor (the engine's CUDA graphs copy it): tokens, then the label
    assert batch.shape == (50, SHORT + 1) and batch.dtype == torch.int64
    idx = task.batches(3)
    assert torch.equal(batch[:, :-1], task.x_train[idx]) and torch.equal(batch[:, -1].float(), task.y_train[idx])
    expected = torch.nn.functional.binary_cross_entropy(task.model(task.x_train[idx]), task.y_train[idx])
    torch.testing.assert_close(task.loss(batch), expected)


def test_val_batch_is_50_distinct_rows_deterministic_in_seed_and_step(task, data_dir):
    a = task.val_batch_indices(7)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and int(a.max()) < 250
    task.val_batch_indices(8)
    assert torch.equal(task.val_batch_indices(7), a)  # no hidden state carried between calls
    assert not torch.equal(task.val_batch_indices(8), a)
    other = ImdbTask(ImdbConfig(data_dir=str(data_dir), seq_len=SHORT, seed=1), torch.device("cpu"))
    assert not torch.equal(other.val_batch_indices(7), a)


def test_full_split_metrics_only_on_the_grid(task):
    assert [s for s in range(1, 31) if task.is_grid_step(s)] == [1, 30]  # eval_every 50, last step 30
    assert all(task.is_eval_step(s) for s in range(1, 31))
    off_grid = task.evaluate(2)
    assert set(off_grid) == {"val_batch_loss", "val_batch_acc"}
    on_grid = task.evaluate(1)
    assert set(on_grid) == {"val_batch_loss", "val_batch_acc", "train_loss", "train_acc", "val_loss", "val_acc"}
    assert all(v.dim() == 0 for v in on_grid.values())
    assert task.model.training  # evaluate restores the mode


def test_per_step_evaluation_is_one_graph_over_staged_indices(task):
    """The engine replays the per-step batch as one CUDA graph reading indices staged by stage_eval;
    the grid's full evaluation stays eager. The staged batch is the reference's per-step batch."""
    assert task.eval_graph_key(1) is None and task.eval_graph_key(30) is None  # grid steps
    assert task.eval_graph_key(2) == task.eval_graph_key(29) == "val_batch"
    task.stage_eval(17)
    assert torch.equal(task._val_batch, task.val_batch_indices(17))
    idx = task.val_batch_indices(5)
    prob = task.model(task.x_val[idx]).detach()
    expected = torch.nn.functional.binary_cross_entropy(prob, task.y_val[idx])
    torch.testing.assert_close(task.evaluate(5)["val_batch_loss"], expected)


def test_table_metrics_skip_missing_and_nonfinite(task):
    records = [
        {"step": 1, "val_batch_acc": 0.5, "val_batch_loss": 0.9, "val_acc": 0.52, "val_loss": 0.8},
        {"step": 2, "val_batch_acc": 0.7, "val_batch_loss": math.nan},
        {"step": 3, "val_batch_acc": 0.6, "val_batch_loss": 0.6, "val_acc": 0.55, "val_loss": 0.85},
        {"step": 4, "val_batch_acc": 0.4, "val_batch_loss": 0.7},
    ]
    assert task.table_metrics(records) == {"best_val_batch_acc": 0.7, "min_val_batch_loss": 0.6,
                                           "best_val_acc": 0.55, "min_val_loss": 0.8, "final_val_acc": 0.55}


def test_reference_flag_names_are_accepted():
    cfg = load_config(ImdbConfig, ["--iterations", "300", "--gradient_clip", "1.5", "--size", "500",
                                   "--init_scale", "1.0", "--filter", "ema"])
    assert (cfg.budget, cfg.clip_grad_norm, cfg.num_reviews, cfg.init_scale) == (300, 1.5, 500, 1.0)
    default = ImdbConfig()
    assert (default.optimizer, default.lr, default.beta2, default.weight_decay, default.batch_size,
            default.budget, default.warmup_steps) == ("AdamW", 3e-4, 0.999, 1.0, 50, 10_000, 0)


def test_smoke_run_writes_every_output(tmp_path, data_dir):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "main_imdb.py", "--config", "configs/imdb/grokfast.yaml", "--max_steps", "12",
         "--eval_every", "5", "--seq_len", str(SHORT), "--device", "cpu", "--progress", "false",
         "--data_dir", str(data_dir), "--out_dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "header.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (out / name).exists(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 13))
    assert all({"val_batch_acc", "val_batch_loss"} <= set(l) for l in lines)
    assert [l["step"] for l in lines if "val_acc" in l] == [1, 5, 10, 12]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "imdb" and summary["filter"] == "ema" and summary["steps"] == 12
    for key in ("best_val_batch_acc", "min_val_batch_loss", "best_val_acc", "min_val_loss", "final_val_acc"):
        assert isinstance(summary[key], float), key
    assert summary["final_val_acc"] == lines[-1]["val_acc"]


def test_missing_data_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "no_data_here"
    result = subprocess.run(
        [sys.executable, "main_imdb.py", "--data_dir", str(missing), "--device", "cpu", "--progress", "false",
         "--out_dir", str(tmp_path / "x")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr
    assert not (tmp_path / "x").exists()


def _run(tmp_path, data_dir, name, *flags):
    from repro.engine import Trainer
    cfg = load_config(ImdbConfig, ["--data_dir", str(data_dir), "--seq_len", str(SHORT), "--device", "cpu",
                                   "--progress", "false", "--eval_every", "10", "--out_dir", str(tmp_path / name),
                                   *flags])
    trainer = Trainer(cfg, ImdbTask)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return trainer, records


def test_carried_batch_holds_the_validation_rows_after_the_training_rows(task):
    batch = task.train_batch(7, carry=6)
    assert batch.shape == (100, SHORT + 1)
    assert torch.equal(batch[:50], task.train_batch(7))
    idx = task.val_batch_indices(6)
    assert torch.equal(batch[50:, :-1], task.x_val[idx]) and torch.equal(batch[50:, -1].float(), task.y_val[idx])
    loss, sums = task.loss_and_sums(batch)
    torch.testing.assert_close(loss, task.loss(task.train_batch(7)))  # the validation rows add no loss
    split = task.split_carried(sums)[1]
    standalone = task.evaluate(6)  # not a grid step: the per-step batch only
    assert set(standalone) == set(split)
    for key in split:
        torch.testing.assert_close(split[key], standalone[key])
    assert not task.carries_eval(1) and not task.carries_eval(50) and task.carries_eval(51)  # grid: by itself


def test_carried_evaluations_give_the_standalone_ones_metrics(tmp_path, data_dir, monkeypatch):
    """The per-step validation batch evaluated in the next update's forward (same parameters) logs what
    evaluating it by itself after each update logs, to float rounding, at the same steps."""
    fused = []
    train_batch = ImdbTask.train_batch
    monkeypatch.setattr(ImdbTask, "train_batch", lambda self, step, carry=None: (
        fused.append(step) if carry is not None else None, train_batch(self, step, carry))[1])
    _, carried = _run(tmp_path, data_dir, "carried", "--max_steps", "33")
    # updates u + 1 carry the evaluation after u for u off the grid (1, 10, 20, 30) and below the last step
    assert fused == [u for u in range(1, 33) if u not in (1, 10, 20, 30)]
    monkeypatch.setattr(ImdbTask, "carries_eval", lambda self, step: False)
    _, alone = _run(tmp_path, data_dir, "alone", "--max_steps", "33")
    assert [r["step"] for r in carried] == [r["step"] for r in alone] == list(range(1, 34))
    for a, b in zip(carried, alone):
        assert a.keys() == b.keys()
        for key in a:
            if key not in ("step", "elapsed_s"):
                assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (a["step"], key)


def test_which_evaluations_are_carried_does_not_change_the_training(tmp_path, data_dir, monkeypatch):
    """Flushes (every 3 evaluations here, or on the clock) and a run cut at step 17 and resumed do not
    change what each update computes: the same parameters at the end, and the same records to float
    rounding (an evaluation at a flush or at the cut runs by itself, not in the next update)."""
    straight, a = _run(tmp_path, data_dir, "straight", "--max_steps", "30")
    _run(tmp_path, data_dir, "cut", "--max_steps", "17", "--log_every_evals", "3")
    from repro.engine import Trainer
    flushed_at, flush = [], Trainer._flush
    monkeypatch.setattr(Trainer, "_flush", lambda self: (flushed_at.append(self.step), flush(self))[1])
    cut, b = _run(tmp_path, data_dir, "cut", "--max_steps", "30", "--log_every_evals", "3", "--resume", "true")
    assert flushed_at[:4] == [20, 23, 26, 29]  # every third evaluation (and step 20's grid), carried or not
    for (name, p), q in zip(straight.model.named_parameters(), cut.model.parameters()):
        assert torch.equal(p, q), name
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() or x["step"] == 17  # a segment's last step evaluates the whole splits too
        for key in x.keys() & y.keys():
            if key != "elapsed_s":
                assert math.isclose(x[key], y[key], rel_tol=1e-5, abs_tol=1e-7), (x["step"], key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_graphed_carried_run_gives_the_eager_runs_metrics(tmp_path, data_dir, monkeypatch):
    """On CUDA the graphed step sees two batch shapes (100 rows carrying, 50 after a grid step). A graphed
    run cut after update 25 and resumed logs what an eager run logs; and, with cuDNN in full fp32, the
    carried evaluations log what evaluating by themselves logs. (Carrying changes the training rows'
    rounding, cuDNN picking other kernels for 100 rows; Adam amplifies it: measured on an H100, the
    per-step values differ by 1e-6 at step 9 and by 2% at step 22 in fp32, by 1% at step 9 in TF32.)"""
    from repro.engine import Trainer
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    def config(name, *extra):
        return load_config(ImdbConfig, ["--data_dir", str(data_dir), "--device", "cuda", "--progress", "false",
                                        "--max_steps", "60", "--eval_every", "20",
                                        "--out_dir", str(tmp_path / name), *extra])

    def records(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    def assert_close(a, b, rel):
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b):
            assert x.keys() == y.keys() or x["step"] in (10, 25)  # a segment's last step: whole splits too
            for key in x.keys() & y.keys():
                assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-7), (x["step"], key)

    cut = Trainer(config("graphed"), ImdbTask)
    train_step = cut._train_step

    def stop_after_update_25(step):
        if step == 24:
            cut.interrupted = "SIGINT"
        return train_step(step)

    cut._train_step = stop_after_update_25
    assert cut.run()["stopped"].startswith("interrupted") and cut.step == 25
    assert {shape[0] for shape in cut.graphed_step.shape_graphs} == {50, 100}
    Trainer(config("graphed", "--resume", "true"), ImdbTask).run()
    Trainer(config("eager", "--cuda_graphs", "false"), ImdbTask).run()
    assert_close(records("graphed"), records("eager"), rel=1e-5)
    monkeypatch.setattr(ImdbTask, "carries_eval", lambda self, step: False)
    Trainer(config("alone", "--cuda_graphs", "false", "--max_steps", "10"), ImdbTask).run()
    assert_close(records("alone"), records("eager")[:10], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_a_resumed_imdb_runs_peak_gpu_memory_equals_an_uninterrupted_ones(tmp_path, data_dir, peak_gpu_mb):
    """A run resumed off the grid captures its 100-row (carrying) training graph before the 50-row one,
    a fresh run the other way round; the peak must not depend on it."""
    gpu = ["--data_dir", str(data_dir), "--device", "cuda", "--progress", "false", "--eval_every", "20"]
    fresh = peak_gpu_mb("main_imdb.py", tmp_path / "fresh", *gpu, "--max_steps", "60")
    peak_gpu_mb("main_imdb.py", tmp_path / "cut", *gpu, "--max_steps", "25")
    resumed = peak_gpu_mb("main_imdb.py", tmp_path / "cut", *gpu, "--max_steps", "60", "--resume")
    assert resumed == pytest.approx(fresh, abs=1.0)
