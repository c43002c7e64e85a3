"""The filter sees exactly the gradients it should: under gradient accumulation, clipping, fp16
(GradScaler) and bf16 autocast. A recorder wrapped around GradFilter.step keeps the gradients and
parameters it is called with; the expected gradient is computed independently, in fp32, from those
parameters on the whole batch of that step."""
import copy
import json

import pytest
import torch

from grokfast import GradFilter
from repro.config import load_config
from repro.engine import Trainer
from repro.tasks.modular import ModularConfig, ModularTask

SMALL = ["--p", "23", "--batch_size", "64", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
         "--device", "cpu", "--progress", "false", "--filter", "ema", "--warmup_steps", "0", "--weight_decay", "0.005"]


@pytest.fixture
def calls(monkeypatch):
    """Every GradFilter.step call: (gradients, parameters) as the filter sees them."""
    seen = []
    original = GradFilter.step

    def recording_step(self):
        seen.append(([p.grad.detach().clone() for _, p in self._params],
                     [p.detach().clone() for _, p in self._params]))
        original(self)

    monkeypatch.setattr(GradFilter, "step", recording_step)
    return seen


def trainer(tmp_path, *flags) -> Trainer:
    cfg = load_config(ModularConfig, SMALL + ["--out_dir", str(tmp_path / "run"), *flags])
    return Trainer(cfg, ModularTask)


def full_batch_grads(t: Trainer, params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    """fp32 gradient of the whole batch of `step` at `params`, on a copy of the model."""
    ref = copy.deepcopy(t.runner.model)
    with torch.no_grad():
        for p, value in zip(ref.parameters(), params):
            p.copy_(value)
    own, t.task.model = t.task.model, ref
    try:
        loss = t.task.loss(t.task.train_batch(step))
    finally:
        t.task.model = own
    return list(torch.autograd.grad(loss, list(ref.parameters())))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def relative_error(got, want) -> float:
    return float((flat(got) - flat(want)).norm() / flat(want).norm())


@pytest.mark.parametrize("batch_size, accum", [(64, 2), (63, 4)])
def test_accumulation_filters_the_whole_batch_gradient_once_per_update(tmp_path, calls, batch_size, accum):
    t = trainer(tmp_path, "--batch_size", str(batch_size), "--grad_accum_steps", str(accum), "--max_steps", "4")
    t.run()
    assert len(calls) == 4  # once per optimizer step, not per micro-batch
    for step, (grads, params) in enumerate(calls):
        assert relative_error(grads, full_batch_grads(t, params, step)) < 1e-5


def test_accumulation_matches_one_big_batch(tmp_path, calls):
    """k micro-batches and one batch give the same run, within fp32 rounding. (SGD: Adam divides by
    sqrt(v), which blows a rounding difference of a near-zero gradient entry up to a step of size lr.)"""
    flags = ["--max_steps", "5", "--optimizer", "SGD", "--lr", "0.1", "--momentum", "0.9"]
    one = trainer(tmp_path / "one", *flags)
    one.run()
    two = trainer(tmp_path / "two", *flags, "--grad_accum_steps", "2")
    two.run()
    for a, b in zip(one.runner.model.parameters(), two.runner.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_filter_sees_clipped_gradients(tmp_path, calls):
    max_norm = 0.05
    t = trainer(tmp_path, "--clip_grad_norm", str(max_norm), "--max_steps", "3")
    t.run()
    assert len(calls) == 3
    for step, (grads, params) in enumerate(calls):
        want = full_batch_grads(t, params, step)
        norm = float(flat(want).norm())
        assert norm > max_norm  # clipping is active
        assert float(flat(grads).norm()) <= max_norm * (1 + 1e-5)
        assert relative_error(grads, [g * (max_norm / norm) for g in want]) < 1e-5


def test_fp16_filter_sees_unscaled_gradients(tmp_path, calls):
    t = trainer(tmp_path, "--amp", "fp16", "--max_steps", "3")
    t.run()
    assert t.runner.precision.scaler is not None and t.runner.precision.scaler.get_scale() >= 2.0**10
    assert len(calls) == 3
    for step, (grads, params) in enumerate(calls):
        want = full_batch_grads(t, params, step)
        assert relative_error(grads, want) < 2e-2  # fp16 rounding, not a factor 2**16
        assert 0.98 < float(flat(grads).norm() / flat(want).norm()) < 1.02


def test_fp16_overflow_steps_skip_the_filter_and_the_optimizer(tmp_path, calls):
    """With a huge initial scale the first steps overflow: the scaler skips them, and the filter (run
    inside the optimizer step) neither sees nor records their inf gradients."""
    t = trainer(tmp_path, "--amp", "fp16", "--max_steps", "6", "--clip_grad_norm", "1.0")
    t.runner.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # overflows the first steps
    t.run()
    assert 0 < len(calls) < 6
    for grads, _ in calls:
        assert torch.isfinite(flat(grads)).all()
    assert all(torch.isfinite(st["ema"]).all() for st in t.runner.filter.state.values())
    assert all(torch.isfinite(p).all() for p in t.runner.model.parameters())


def test_bf16_autocast_gives_the_filter_finite_gradients_of_the_right_size(tmp_path, calls):
    t = trainer(tmp_path, "--amp", "bf16", "--max_steps", "3", "--grad_accum_steps", "2")
    t.run()
    assert t.runner.precision.scaler is None and len(calls) == 3
    for step, (grads, params) in enumerate(calls):
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        want = full_batch_grads(t, params, step)
        assert relative_error(grads, want) < 0.1
        assert 0.9 < float(flat(grads).norm() / flat(want).norm()) < 1.1


def test_skip_policy_skips_filter_and_optimizer(tmp_path, calls):
    """--on_nonfinite skip: a step whose loss is not finite changes neither the filter state nor the
    parameters."""
    t = trainer(tmp_path, "--max_steps", "4", "--on_nonfinite", "skip")
    real_loss = t.task.loss_and_sums

    def loss_and_sums(batch, calls_so_far=[0]):
        calls_so_far[0] += 1
        value, sums = real_loss(batch)
        return (value * float("nan") if calls_so_far[0] == 3 else value), sums  # the third update's loss

    t.task.loss_and_sums = loss_and_sums
    updates = []
    t.runner.optimizer.register_step_post_hook(lambda *args: updates.append(1))
    t.run()
    assert len(calls) == 3 and len(updates) == 3 and t.runner.skipped_steps == 1 and t.step == 4


def test_padding_micro_batches_count_in_no_training_metric(tmp_path):
    """64 micro-batches of the epoch's last batch (61 rows) include 3 padding ones (weight 0): the epoch's
    training metrics still cover its 253 examples."""
    def first_record(name, accum):
        t = trainer(tmp_path / name, "--max_steps", "4", "--grad_accum_steps", str(accum))
        t.run()
        return json.loads((tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()[0])

    whole, cut = first_record("whole", 1), first_record("cut", 64)
    assert whole["step"] == cut["step"] == 4
    assert cut["train_acc"] == pytest.approx(whole["train_acc"], abs=1e-7)
    assert cut["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
