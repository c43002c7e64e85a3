"""The IMDb task: the reference's model and loop, both validation protocols, main_imdb.py end to end."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.config import load_config
from repro.data.imdb import load_imdb
from repro.tasks.imdb import PREFIX_STEP, ImdbConfig, ImdbTask, SentimentLSTM, leading_padding

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN's LSTM)")
def test_the_shared_padding_prefix_runs_on_cudnn(data_dir):
    """cuDNN's LSTM refuses states the CPU accepts (non-contiguous ones): the prefixed forward and backward
    run there and match the plain model's (cuDNN may use TF32, hence the tolerance)."""
    data = load_imdb(data_dir, num_reviews=1000, vocab_size=1000, seq_len=500, seed=0)
    rows, target = data["x_train"][:50].cuda(), data["y_train"][:50].cuda()
    k = int(leading_padding(rows).min())
    torch.manual_seed(0)
    model = SentimentLSTM(1001).cuda()
    results = []
    for tokens, prefix in ((rows, 0), (rows[:, k:], k)):
        model.zero_grad()
        prob = model(tokens, prefix)
        torch.nn.functional.binary_cross_entropy(prob, target).backward()
        results.append((prob.detach(), model.lstm.weight_hh_l0.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-2, atol=1e-4)


def test_leading_padding_counts_each_rows_first_zeros():
    tokens = torch.tensor([[0, 0, 0, 5, 0, 7], [0, 0, 3, 4, 5, 6], [4, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert leading_padding(tokens).tolist() == [3, 2, 0, 6]


def test_the_shared_padding_prefix_is_the_same_function(data_dir):
    """Running the padding every row starts with once (the model's pad_prefix) gives the plain LSTM's outputs and
    gradients; in float64, so that rounding cannot hide a difference. Real reviews at the paper's length."""
    data = load_imdb(data_dir, num_reviews=1000, vocab_size=1000, seq_len=500, seed=0)
    k = int(leading_padding(data["x_train"]).min())
    assert k == 152 and int(leading_padding(data["x_val"]).min()) == 150  # of 500: the paper's reviews are short
    rows, target = data["x_train"][:6], data["y_train"][:6].double()
    torch.manual_seed(0)
    plain = SentimentLSTM(1001, embedding_dim=8, hidden_dim=16).double()
    for p in plain.parameters():
        p.data.mul_(6.0)  # the task's init scale: saturating gates, where a difference would show
    prefixed = SentimentLSTM(1001, embedding_dim=8, hidden_dim=16).double()
    prefixed.load_state_dict(plain.state_dict())
    outputs = []
    for model, prefix in ((plain, 0), (prefixed, k)):
        prob = model(rows[:, prefix:], prefix)
        torch.nn.functional.binary_cross_entropy(prob, target).backward()
        outputs.append((prob, {name: p.grad for name, p in model.named_parameters()}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-12, atol=1e-12)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_batch_starts_after_the_padding_all_its_rows_share(data_dir):
    """At the paper's length: each training and validation batch is cut after its rows' shared leading
    padding, rounded down to a multiple of PREFIX_STEP; loss and evaluation are the plain model's on the
    whole rows."""
    task = ImdbTask(ImdbConfig(data_dir=str(data_dir), hidden_dim=8, embedding_dim=4, max_steps=30),
                    torch.device("cpu"))
    prefixes = []
    for step in range(30):  # two epochs
        batch, rows = task.train_batch(step), task.x_train[task.batches(step)]
        k = task.batch_prefix(step)
        shared = int(leading_padding(rows).min())
        assert k % PREFIX_STEP == 0 and shared - PREFIX_STEP < k <= shared
        assert torch.equal(batch[:, :-1], rows[:, k:])
        prefixes.append(k)
    assert min(prefixes) >= 150 and len(set(prefixes)) > 1
    plain = torch.nn.functional.binary_cross_entropy(task.model(rows), batch[:, -1].float())
    torch.testing.assert_close(task.loss(batch), plain, rtol=1e-5, atol=1e-6)
    val_prefixes = []
    for step in range(2, 30):
        rows = task.x_val[task.val_batch_indices(step)]
        k, shared = task.val_batch_prefix(step), int(leading_padding(rows).min())
        assert k % PREFIX_STEP == 0 and shared - PREFIX_STEP < k <= shared
        assert task.eval_graph_key(step) == ("val_batch", k)
        val_prefixes.append(k)
    assert len(set(val_prefixes)) > 1
    with torch.no_grad():
        plain = torch.nn.functional.binary_cross_entropy(task.model(rows), task.y_val[task.val_batch_indices(29)])
    torch.testing.assert_close(task.evaluate(29)["val_batch_loss"], plain, rtol=1e-5, atol=1e-6)


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
    idx, k = task.batches(3), task.batch_prefix(3)
    assert batch.shape == (50, SHORT - k + 1) and batch.dtype == torch.int64
    assert torch.equal(batch[:, :-1], task.x_train[idx, k:]) and torch.equal(batch[:, -1].float(), task.y_train[idx])
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
    """The engine replays the per-step batch as a CUDA graph (one per width) reading indices staged by
    stage_eval; the grid's full evaluation stays eager. The staged batch is the reference's per-step batch."""
    assert task.eval_graph_key(1) is None and task.eval_graph_key(30) is None  # grid steps
    assert task.eval_graph_key(2) == ("val_batch", task.val_batch_prefix(2))
    task.stage_eval(17)
    assert torch.equal(task._val_batch, task.val_batch_indices(17))
    idx = task.val_batch_indices(5)
    prob = task.model(task.x_val[idx]).detach()
    expected = torch.nn.functional.binary_cross_entropy(prob, task.y_val[idx])
    torch.testing.assert_close(task.evaluate(5)["val_batch_loss"], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_per_step_evaluation_graphs_share_a_pool_and_give_the_eager_values(data_dir):
    """One graph per batch width, all in one memory pool: replayed in another order than captured, each
    still gives the eager evaluation's values (a graph's temporaries may overwrite another's, never a
    result already returned)."""
    from repro.graphs import GraphedEvaluate
    cuda_task = ImdbTask(ImdbConfig(data_dir=str(data_dir), max_steps=300), torch.device("cuda"))
    first_step = {}
    for step in range(2, 300):
        key = cuda_task.eval_graph_key(step)
        if key is not None:
            first_step.setdefault(key, step)
    assert len(first_step) >= 3, first_step
    graphed = GraphedEvaluate(cuda_task)
    for key in [*first_step, *reversed(first_step)]:
        got = graphed(first_step[key], key)
        expected = cuda_task.evaluate(first_step[key])
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value.float(), rtol=1e-5, atol=1e-6)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_a_resumed_imdb_runs_peak_gpu_memory_is_no_more_than_an_uninterrupted_ones(tmp_path, data_dir, peak_gpu_mb):
    """A run resumed off the grid captures its graphs in another order than a fresh run, and each segment
    only those of the batch widths it meets (a graph per width): its peak must not exceed the fresh run's."""
    gpu = ["--data_dir", str(data_dir), "--device", "cuda", "--progress", "false", "--eval_every", "20"]
    fresh = peak_gpu_mb("main_imdb.py", tmp_path / "fresh", *gpu, "--max_steps", "60")
    peak_gpu_mb("main_imdb.py", tmp_path / "cut", *gpu, "--max_steps", "25")
    resumed = peak_gpu_mb("main_imdb.py", tmp_path / "cut", *gpu, "--max_steps", "60", "--resume")
    print(f"peak GPU memory: fresh {fresh:.1f} MB, resumed {resumed:.1f} MB")
    assert resumed <= fresh + 1.0
