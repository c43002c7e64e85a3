"""A diverging run stops with a one-line error naming the step (a non-finite loss) or the steps since the
last check (a gradient or parameter), and writes no checkpoint then: the last one holds a finite state."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro import checkpoint as ckpt
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
    return ckpt.load(out / "checkpoint.pt", torch.device("cpu"))


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values())


# checked at every step, with checkpoints at 3, 6 / 4, 8 / none; or at the last step's (or a timed) flush
@pytest.mark.parametrize("every, log_every, saved", [(3, 1, 6), (4, 1, 8), (0, 1, None), (0, 100, None)])
def test_nonfinite_loss_stops_naming_its_step(tmp_path, capsys, every, log_every, saved):
    out = tmp_path / "run"
    code, err = main(capsys, out, "--lr", "3", "--checkpoint_every", str(every), "--log_every_evals", str(log_every))
    assert code == 2
    kept = f"the checkpoint of step {saved} holds the last finite state" if saved else "no checkpoint was saved before it"
    assert err.strip() == f"error: non-finite training loss at step 9; {kept} ({out}; --on_nonfinite skip skips such steps)"
    if saved:
        state = checkpoint(out)
        assert state["step"] == saved and finite(state) and state["num_records"] == saved
    else:
        assert not (out / "checkpoint.pt").exists()
    assert json.loads((out / "summary.json").read_text())["stopped"] == "non-finite training loss at step 9"


@pytest.mark.parametrize("clip, what", [([], "training loss at step 9"),
                                        (["--clip_grad_norm", "1e30"], "gradient in steps 8-8")])
def test_nonfinite_gradient_is_named(tmp_path, capsys, clip, what):
    """The inf gradient of step 8: the clipping norm flags it; without clipping it shows as the NaN loss
    of step 9."""
    out = tmp_path / "run"
    code, err = main(capsys, out, "--lr", "2", "--checkpoint_every", "5", *clip)
    assert code == 2 and err.startswith(f"error: non-finite {what}; the checkpoint of step 5 holds")
    state = checkpoint(out)
    assert state["step"] == 5 and finite(state)


def test_resume_from_the_saved_state_diverges_again(tmp_path, capsys):
    out = tmp_path / "run"
    main(capsys, out, "--lr", "3", "--checkpoint_every", "4")
    code, err = main(capsys, out, "--lr", "3", "--checkpoint_every", "4", "--resume")
    assert code == 2 and "at step 9; the checkpoint of step 8" in err


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
    assert result.stderr.splitlines() == [f"error: non-finite training loss at step 9; no checkpoint was saved "
                                          f"before it ({out}; --on_nonfinite skip skips such steps)"]


def test_skipped_updates_count_in_no_training_metric(tmp_path, capsys):
    """Updates 9-15 are skipped: the record at 10 covers updates 6-8 only, the one at 15 has none."""
    out = tmp_path / "run"
    code, _ = main(capsys, out, "--lr", "3", "--on_nonfinite", "skip", "--max_steps", "15", "--eval_every", "5")
    assert code == 0
    records = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert sorted(records) == [5, 10, 15]
    assert all(torch.isfinite(torch.tensor(records[s]["train_loss"])) for s in (5, 10))
    assert "train_loss" not in records[15] and "val_loss" in records[15]
