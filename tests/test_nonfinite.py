"""A diverging run stops with a one-line error naming the step, after checkpointing the last finite
state, which an eager replay from the last checkpoint (or the run's start) recovers exactly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.cli import run
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
# plain SGD at lr 3 blows up on p = 23: the loss is finite up to step 8 and NaN at step 9;
# at lr 2 the loss stays finite while the gradient of step 8 overflows to inf
DIVERGE = ["--p", "23", "--batch_size", "64", "--device", "cpu", "--progress", "false", "--budget", "60",
           "--optimizer", "SGD", "--warmup_steps", "0", "--eval_every", "1", "--log_every_evals", "1"]


def main(capsys, out, *flags) -> tuple[int, str]:
    code = run(ModularConfig, ModularTask, "", [*DIVERGE, "--out_dir", str(out), *flags])
    return code, capsys.readouterr().err


def checkpoint(out) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values())


# replay from the start, from step 6, none (saved at 8); detected at the last step's flush, 51 steps late
@pytest.mark.parametrize("every, log_every", [(0, 1), (3, 1), (4, 1), (0, 100)])
def test_nonfinite_loss_stops_with_the_state_before_it(tmp_path, capsys, every, log_every):
    out = tmp_path / "run"
    code, err = main(capsys, out, "--lr", "3", "--checkpoint_every", str(every), "--log_every_evals", str(log_every))
    assert code == 2
    assert err.strip() == (f"error: non-finite training loss at step 9; checkpoint of step 8 saved in {out} "
                           f"(--on_nonfinite skip skips such steps)")
    state = checkpoint(out)
    assert state["step"] == 8 and finite(state) and state["num_records"] == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert json.loads((out / "summary.json").read_text())["stopped"] == "non-finite training loss at step 9"


def test_replayed_state_is_the_run_state(tmp_path, capsys):
    """Replaying 8 steps from the start gives bitwise the state the run had (CPU, same batches)."""
    main(capsys, tmp_path / "replayed", "--lr", "3")
    main(capsys, tmp_path / "saved", "--lr", "3", "--checkpoint_every", "4")
    a, b = checkpoint(tmp_path / "replayed"), checkpoint(tmp_path / "saved")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["rng"]["torch"], b["rng"]["torch"]))


@pytest.mark.parametrize("clip", [[], ["--clip_grad_norm", "1e30"]])
def test_nonfinite_gradient_is_named(tmp_path, capsys, clip):
    """Without clipping the inf gradient of step 8 shows as a NaN loss at step 9, and the replay finds
    step 8; with clipping, the clipping norm flags it directly."""
    out = tmp_path / "run"
    code, err = main(capsys, out, "--lr", "2", "--checkpoint_every", "5", *clip)
    assert code == 2 and err.startswith("error: non-finite gradient at step 8; checkpoint of step 7 saved")
    state = checkpoint(out)
    assert state["step"] == 7 and finite(state)


def test_resume_from_the_saved_state_diverges_again(tmp_path, capsys):
    out = tmp_path / "run"
    main(capsys, out, "--lr", "3")
    code, err = main(capsys, out, "--lr", "3", "--resume")
    assert code == 2 and "at step 9; checkpoint of step 8" in err


def test_skip_policy_finishes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, _ = main(capsys, out, "--lr", "3", "--on_nonfinite", "skip", "--max_steps", "15")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 15 and summary["skipped_nonfinite_steps"] == 15 - 8
    assert finite(checkpoint(out))


def test_end_to_end_one_line_no_traceback(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "main.py", *DIVERGE, "--lr", "3", "--out_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: non-finite training loss at step 9; checkpoint of step 8 saved "
                                          f"in {out} (--on_nonfinite skip skips such steps)"]


def test_the_saved_state_carries_the_training_sums_of_its_own_steps(tmp_path, capsys):
    """The replay restores the sums of the updates since the last evaluation (at 5) up to the saved
    step 8, not the ones the run held when it found the NaN: updates 6-8, batches of 64, 64 and 61."""
    out = tmp_path / "run"
    main(capsys, out, "--lr", "3", "--eval_every", "5", "--checkpoint_every", "3", "--log_every_evals", "100")
    state = checkpoint(out)
    assert state["step"] == 8 and bool(torch.isfinite(state["train_sums"]).all())
    assert state["train_sums"][2].item() == 64 + 64 + 61


def test_skipped_updates_count_in_no_training_metric(tmp_path, capsys):
    """Updates 9-15 are skipped: the record at 10 covers updates 6-8 only, the one at 15 has none."""
    out = tmp_path / "run"
    code, _ = main(capsys, out, "--lr", "3", "--on_nonfinite", "skip", "--max_steps", "15", "--eval_every", "5")
    assert code == 0
    records = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert sorted(records) == [5, 10, 15]
    assert all(torch.isfinite(torch.tensor(records[s]["train_loss"])) for s in (5, 10))
    assert "train_loss" not in records[15] and "val_loss" in records[15]
