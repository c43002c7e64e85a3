"""main.py end to end on the CPU: every output file, and the task's exact data."""
import json
import subprocess
import sys
from pathlib import Path

import torch

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
