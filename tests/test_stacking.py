"""--stack_seeds: several seeds as one stacked model must be those seeds' own runs (CPU, real task)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from repro.config import load_config
from repro.errors import UserError
from repro.stacking import early_stop_index
from repro.tasks.modular import ModularConfig, ModularTask, StackedDecoder, StackedModularTask

REPO = Path(__file__).resolve().parents[1]
EMA = ["--config", "configs/modular/ema.yaml", "--device", "cpu", "--progress", "false"]


def run_main(*args, cwd=REPO):
    result = subprocess.run([sys.executable, "main.py", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    return result


def test_stacked_decoder_is_its_members_forward_and_gradient():
    tasks = [ModularTask(ModularConfig(seed=s), torch.device("cpu")) for s in (3, 5)]
    stacked = StackedDecoder([t.model for t in tasks])
    batches = torch.stack([t.train_batch(0) for t in tasks])
    logits = stacked(batches[:, :4])
    (logits.square().mean(dim=(1, 2, 3)) * torch.tensor([1.0, 2.0])).sum().backward()
    stacked_params = dict(stacked.decoder.named_parameters())
    for i, task in enumerate(tasks):
        own = task.model(batches[i, :4])
        torch.testing.assert_close(logits[i], own, rtol=1e-5, atol=1e-5)
        (own.square().mean() * (i + 1)).backward()
        for name, p in task.model.named_parameters():
            torch.testing.assert_close(stacked_params[name].grad[i], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_stacked_task_starts_from_each_seeds_own_weights_and_data():
    cfg = load_config(ModularConfig, ["--stack_seeds", "1,4"])
    assert cfg.seed == 1  # the first stacked seed
    stacked = StackedModularTask(cfg, torch.device("cpu"))
    for i, seed in enumerate((1, 4)):
        alone = ModularTask(ModularConfig(seed=seed), torch.device("cpu"))
        assert torch.equal(stacked.model.decoder.head.weight[i], alone.model.head.weight)
        assert torch.equal(stacked.train_batch(7)[i], alone.train_batch(7))


def test_stacked_run_matches_the_runs_made_one_at_a_time(tmp_path):
    result = run_main(*EMA, "--stack_seeds", "0,1", "--max_steps", "30", "--results_dir", str(tmp_path / "stack"))
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        alone = run_main(*EMA, "--seed", str(seed), "--max_steps", "30", "--results_dir", str(tmp_path / "alone"))
        assert alone.returncode == 0, alone.stderr
        name = f"mul97_ema_a0.98_l2_adam_lr0.001_wd0.005_s{seed}"
        member, single = tmp_path / "stack" / "modular" / name, tmp_path / "alone" / "modular" / name
        for file in ("config.yaml", "header.json", "metrics.jsonl", "summary.json", "curves.png"):
            assert (member / file).exists(), file
        member_cfg, single_cfg = (yaml.safe_load((d / "config.yaml").read_text()) for d in (member, single))
        assert member_cfg.pop("results_dir") != single_cfg.pop("results_dir")
        assert member_cfg == single_cfg  # the member's config reruns it alone
        got = [json.loads(line) for line in (member / "metrics.jsonl").read_text().splitlines()]
        want = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in got] == [r["step"] for r in want] == [10, 20, 30]
        for g, w in zip(got, want):
            assert set(g) == set(w)
            for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
                assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), key
        summary = json.loads((member / "summary.json").read_text())
        assert summary["seed"] == seed and summary["steps"] == 30 and summary["stopped"] == "budget"
        assert summary["stack"]["seeds"] == [0, 1]
        assert (member / summary["stack"]["folder"] / "checkpoint.pt").exists()
    stack = tmp_path / "stack" / "modular" / "stacks" / "mul97_ema_a0.98_l2_adam_lr0.001_wd0.005_s0-1"
    assert len(json.loads((stack / "summary.json").read_text())["members"]) == 2
    again = run_main(*EMA, "--stack_seeds", "0,1", "--max_steps", "30", "--results_dir", str(tmp_path / "stack"),
                     "--skip_finished", "true")
    assert again.returncode == 0 and again.stdout.startswith("skipped"), again.stderr


def test_each_member_is_cut_at_its_own_early_stop(tmp_path):
    # val acc starts near 1/97: a threshold of 0.005 is met at every evaluation, so a run alone would
    # stop after 2 evaluations (step 20) however long the stack goes on
    result = run_main(*EMA, "--stack_seeds", "0,1", "--max_steps", "40", "--results_dir", str(tmp_path),
                      "--early_stop_acc", "0.005", "--early_stop_patience", "2")
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        member = tmp_path / "modular" / f"mul97_ema_a0.98_l2_adam_lr0.001_wd0.005_s{seed}"
        summary = json.loads((member / "summary.json").read_text())
        assert summary["steps"] == 20 and summary["stopped"].startswith("early_stop")
        assert len((member / "metrics.jsonl").read_text().splitlines()) == 2


def test_early_stop_index_counts_a_streak():
    records = [{"val_acc": a} for a in (0.96, 0.5, 0.95, 0.97, 0.99)]
    assert early_stop_index(records, 0.95, 3) == 4
    assert early_stop_index(records, 0.95, 4) is None
    assert early_stop_index(records, 0.0, 3) is None  # early stopping off


@pytest.mark.parametrize("flags, message", [
    (["--stack_seeds", "0,0"], "distinct"),
    (["--stack_seeds", "0"], "distinct"),
    (["--stack_seeds", "0,x"], "stack_seeds must list seeds"),
    (["--stack_seeds", "0,1", "--seed", "1"], "first of stack_seeds"),
    (["--stack_seeds", "0,1", "--clip_grad_norm", "1"], "clip_grad_norm"),
])
def test_bad_stacks_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        load_config(ModularConfig, flags)


def test_a_stack_does_not_overwrite_a_run_and_other_tasks_cannot_stack(tmp_path):
    alone = run_main(*EMA, "--seed", "1", "--max_steps", "10", "--results_dir", str(tmp_path))
    assert alone.returncode == 0, alone.stderr
    result = run_main(*EMA, "--stack_seeds", "0,1", "--max_steps", "10", "--results_dir", str(tmp_path))
    assert result.returncode == 2 and "already holds a run" in result.stderr
    mnist = subprocess.run([sys.executable, "main_mnist.py", "--stack_seeds", "0,1", "--device", "cpu",
                            "--results_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert mnist.returncode == 2 and "cannot stack" in mnist.stderr
