"""What the engine needs from a task, and the shared deterministic batch sampler.

A task owns its data (already on the device), its model, its loss and its metrics. The engine owns
everything else: optimizer, warm-up, clipping, the Grokfast filter, logging, checkpoints.
"""
import functools
from typing import Any, Hashable

import torch
from torch import nn


class Task:
    """Interface every task implements (see tasks/modular.py for the reference implementation)."""

    name: str = ""
    model: nn.Module
    # True when loss_and_sums(batch) / evaluate(step) are fixed computations with no host sync, so the engine
    # may capture them as CUDA graphs (per batch shape)
    graph_safe_loss: bool = False
    graph_safe_eval: bool = False
    # the dimension of train_batch()'s tensor that indexes examples, so the engine can cut a batch for
    # gradient accumulation or data parallelism; None: the batch cannot be cut (neither is offered)
    batch_dim: int | None = None
    # True when the task writes its loss and evaluation for a population's stacked members itself
    # (population_loss_and_sums, population_evaluate: faster than vmap over its own methods)
    population_native: bool = False

    def train_batch(self, step: int) -> Any:
        """The batch of update `step` (0-based). A pure function of (seed, step), so resuming needs no
        data-loader state."""
        raise NotImplementedError

    def loss(self, batch: Any) -> torch.Tensor:
        """Scalar training loss of `batch`."""
        raise NotImplementedError

    def loss_and_sums(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the engine calls each update: the loss (it calls backward on it) and, for a task whose
        training metrics come from the training batches themselves (as the reference's mod-97 ones
        do), a 1-D tensor of sums over the batch from the same forward, which the engine adds up
        between evaluations and hands to train_metrics(). Default: no sums."""
        return self.loss(batch), None

    def train_metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training metrics (0-dim tensors) from the batch sums of the updates since the last evaluation."""
        return {}

    def is_eval_step(self, step: int) -> bool:
        """Whether to evaluate after `step` updates (1-based)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        """0-dim device tensors (val_loss, val_acc, train_loss, ...; training metrics may come from
        train_metrics() instead). No host sync here: the engine buffers them and copies many at once."""
        raise NotImplementedError

    def eval_graph_key(self, step: int) -> Hashable | None:
        """Which captured CUDA graph evaluate(step) may replay (one per key, when graph_safe_eval), or None
        to run it eagerly. Default: every evaluation is the same computation."""
        return "evaluate"

    def stage_eval(self, step: int) -> None:
        """Before a graph replays evaluate(step): copy its step-dependent inputs into the fixed tensors
        the graph reads. Default: it has none."""

    def table_metrics(self, records: list[dict]) -> dict:
        """Task-specific summary fields beside the common ones."""
        return {}

    def run_name_part(self) -> str:
        return self.name

    def population_loss_and_sums(self, params: dict, data: dict,
                                 batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """With population_native: loss_and_sums of M members at once -> (losses [M], sums [M, k] or None).
        params: {parameter name: [M, *shape]}; data: every tensor attribute of the task, [M, ...] (member
        i's value in row i); batch: the members' train_batch(step) stacked on a new dim 0."""
        raise NotImplementedError

    def population_evaluate(self, params: dict, data: dict, step: int) -> dict[str, torch.Tensor]:
        """With population_native: evaluate(step) of M members at once -> {metric: [M]}."""
        raise NotImplementedError


class EpochBatches:
    """Index batches of a shuffled epoch, like a DataLoader(shuffle=True, drop_last=False).

    Epoch e's permutation comes from a generator seeded with (seed, e), so the batch of any step
    is known without replaying earlier steps; the current epoch's permutation is cached. On CUDA the
    next epoch's permutation is drawn ahead on a side stream, so its small sort kernels run beside the
    current epoch's steps instead of between them (a population draws one per member each epoch: 128
    members' draws took 7% of a bf16 step's GPU time on an H200); the same values either way.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, device: torch.device):
        if device.type == "cuda" and device.index is None:  # one side stream per GPU, whichever is current later
            device = torch.device("cuda", torch.cuda.current_device())
        self.n, self.batch_size, self.seed, self.device = num_examples, batch_size, seed, device
        self.batches_per_epoch = -(-num_examples // batch_size)
        self._epoch, self._perm = -1, None
        self._generator = torch.Generator(device=device)
        self._ahead = None  # (epoch, permutation, event recorded when it is drawn), CUDA only

    def _draw(self, epoch: int) -> torch.Tensor:
        self._generator.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=self._generator, device=self.device)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self.device.type != "cuda":
            return self._draw(epoch)
        current = torch.cuda.current_stream(self.device)
        if self._ahead is not None and self._ahead[0] == epoch:
            _, perm, drawn = self._ahead
            current.wait_event(drawn)
            perm.record_stream(current)  # the allocator must not reuse it while this stream reads it
        else:
            perm = self._draw(epoch)
        with torch.cuda.stream(_side_stream(self.device)):
            ahead = self._draw(epoch + 1)
            drawn = torch.cuda.Event()
            drawn.record()
        self._ahead = (epoch + 1, ahead, drawn)
        return perm

    def __call__(self, step: int) -> torch.Tensor:
        epoch, index = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._perm = self._permutation(epoch)
            self._epoch = epoch
        return self._perm[index * self.batch_size:(index + 1) * self.batch_size]


@functools.cache
def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    """One stream per device for the permutations drawn ahead (every EpochBatches shares it)."""
    return torch.cuda.Stream(device)


def scale_parameters_(model: nn.Module, factor: float) -> None:
    """Multiply every initial parameter by `factor` (Omnigrok's large-init trick used by the paper)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
