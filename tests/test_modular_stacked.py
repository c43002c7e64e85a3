"""mod-97's batched Decoder (repro/tasks/modular_stacked.py) against each member's own Decoder, and the
native population path against the generic vmap one."""
import dataclasses

import pytest
import torch

from repro.population import Population
from repro.tasks.modular import ModularConfig, ModularTask
from repro.tasks.modular_stacked import stacked_decoder_logits

CPU = torch.device("cpu")
SMALL = dict(p=23, dim=32, num_heads=2, batch_size=64)


def tasks(num_layers: int, seeds=(0, 1, 2)) -> list[ModularTask]:
    cfg = ModularConfig(**SMALL, num_layers=num_layers, device="cpu")
    return [ModularTask(dataclasses.replace(cfg, seed=s), CPU) for s in seeds]


def flat_grads(task: ModularTask) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in task.model.parameters()])


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_logits_are_each_members_decoder(num_layers):
    members = tasks(num_layers)
    rows = [t.train_data[:, t.train_batch(0)] for t in members]
    with torch.no_grad():
        solo = torch.stack([t.model(r[:4]) for t, r in zip(members, rows)])
        stacked = stacked_decoder_logits(Population(members).params(), torch.stack([r[:4] for r in rows]), 2)
    assert stacked.shape == solo.shape
    torch.testing.assert_close(stacked, solo, rtol=1e-5, atol=1e-5)  # float rounding; a wrong mask is ~1e-1


def test_native_losses_gradients_and_evaluation_match_solo_and_vmap():
    """One step's losses, sums and gradients, and an evaluation: native = solo = vmap to float rounding
    (measured ~2e-7 relative on the default model)."""
    members = tasks(2)
    for t in members:
        t.model.zero_grad()
        t.loss_and_sums(t.train_batch(0))[0].backward()
    solo_grads = torch.stack([flat_grads(t) for t in members])
    solo_sums = torch.stack([t.loss_and_sums(t.train_batch(0))[1] for t in members])
    solo_eval = [t.evaluate(10) for t in members]
    population = Population(members)
    assert population.native
    results = {}
    for native in (True, False):
        population.native = native
        losses, sums = population.forward_backward(population.train_batch(0))
        results[native] = population.flat.grad.clone(), sums.detach(), population.evaluate(10)
    for grads, sums, evaluation in results.values():
        torch.testing.assert_close(grads, solo_grads, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sums, solo_sums, rtol=1e-5, atol=1e-6)
        for i, solo in enumerate(solo_eval):
            for key, value in solo.items():
                torch.testing.assert_close(evaluation[key][i], value, rtol=1e-5, atol=1e-6)
