"""EpochBatches: a shuffled epoch's batches, a pure function of (seed, step)."""
import pytest
import torch

from repro.tasks.base import EpochBatches


def epoch_of(batches: EpochBatches, epoch: int) -> list[torch.Tensor]:
    first = epoch * batches.batches_per_epoch
    return [batches(step) for step in range(first, first + batches.batches_per_epoch)]


def test_an_epoch_visits_every_example_once_in_batches_of_the_size_with_a_smaller_last():
    batches = EpochBatches(num_examples=23, batch_size=5, seed=3, device=torch.device("cpu"))
    for epoch in range(3):
        parts = epoch_of(batches, epoch)
        assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
        assert sorted(torch.cat(parts).tolist()) == list(range(23))
    assert not torch.equal(torch.cat(epoch_of(batches, 0)), torch.cat(epoch_of(batches, 1)))


def test_any_step_is_known_without_replaying_the_earlier_ones():
    sequential = EpochBatches(23, 5, seed=3, device=torch.device("cpu"))
    expected = [sequential(step).clone() for step in range(40)]
    fresh = EpochBatches(23, 5, seed=3, device=torch.device("cpu"))
    for step in (37, 2, 21, 22, 39, 0):
        assert torch.equal(fresh(step), expected[step])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_on_cuda_the_permutation_drawn_ahead_is_the_one_drawn_directly():
    """The next epoch's permutation, drawn on a side stream while this epoch's batches are used, equals
    the one a fresh sampler draws for that epoch (sequential epochs, a jump, and back)."""
    device = torch.device("cuda")
    ahead = EpochBatches(4656, 512, seed=7, device=device)
    for epoch in (0, 1, 2, 9, 10, 3):
        direct = EpochBatches(4656, 512, seed=7, device=device)
        first = epoch * ahead.batches_per_epoch
        for step in range(first, first + ahead.batches_per_epoch):
            assert torch.equal(ahead(step), direct(step))
