"""mod-97's batched Decoder (repro/tasks/modular_stacked.py) against each member's own Decoder, and the
native population path against the generic vmap one."""
import dataclasses

import pytest
import torch

from repro.population import Population
from repro.tasks.modular import ModularConfig, ModularTask
from repro.tasks.modular_stacked import _MemberProduct, row_chunks, stacked_decoder_logits

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


def test_row_chunks_cut_few_members_reductions_only():
    assert row_chunks(1, 2048) == 16 and row_chunks(3, 2048) == 16 and row_chunks(9, 2048) == 4
    assert row_chunks(3, 512) == 4 and row_chunks(3, 192) == 1 and row_chunks(64, 2048) == 1
    assert row_chunks(3, 2049) == 1 and row_chunks(3, 2176) == 16  # chunks divide the rows: 17 x 128 in 16


def test_member_product_gradients_are_the_plain_batched_matmuls():
    """The chunked weight gradient is rows[m].T @ grad[m] summed in another order: equal in float64."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 1024, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(3, 24, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(3, 1024, 24, dtype=torch.float64, generator=generator)
    assert row_chunks(3, 1024) == 8
    out = _MemberProduct.apply(rows, weight)
    grads = torch.autograd.grad(out, (rows, weight), upstream)
    plain = torch.bmm(rows, weight.transpose(1, 2))
    expected = torch.autograd.grad(plain, (rows, weight), upstream)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
