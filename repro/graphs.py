"""CUDA-graph replay of the training step and of evaluation.

These models are tiny, so an eager step is all kernel-launch overhead (about 6 ms per mod-97 step on an
H100, of which the GPU is busy a fraction). Replaying a captured graph launches a whole phase at once.

A training step is a chain of phases: forward+backward (into gradient tensors that stay put), then
clipping, the Grokfast filter and the optimizer step. A phase is captured only when it is a fixed
computation: the MA filter moves its ring-buffer slot every step in Python, SGD has no capturable mode,
and a switch flipped mid-run (two-stage) would be frozen into the graph, so those stay eager and split
the chain. Gradients keep one address for the whole run, which lets every graph share them.
"""
from typing import Callable

import torch

Phase = tuple[Callable[[], None], bool]  # (function, may be captured)


def _side_stream_warmup(fn: Callable[[], object], iters: int) -> None:
    """Run fn a few times on a side stream before capture (cuBLAS workspaces etc.), as torch asks."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(stream)


class GraphedTrainStep:
    """Replays the gradients of `loss_fn(batch)[0]` (into the .grad tensors) plus the capturable prefix
    of `phases` as one graph per batch shape (an epoch's last batch is smaller), then runs the remaining
    phases, capturing each maximal run of capturable ones as one more (shape-independent) graph.

    Call it only after one eager step, so lazily created state (filter EMA, optimizer moments)
    exists and is not re-created inside a graph. `loss_fn` returns (loss, the task's batch sums or None),
    and so does a call.
    """

    def __init__(self, loss_fn: Callable, params: list[torch.Tensor], phases: list[Phase], warmup_iters: int = 2):
        self.loss_fn, self.params, self.warmup_iters = loss_fn, params, warmup_iters
        n_prefix = 0
        while n_prefix < len(phases) and phases[n_prefix][1]:
            n_prefix += 1
        self.prefix = [fn for fn, _ in phases[:n_prefix]]
        self.rest: list[tuple[list[Callable], bool]] = []  # runs of (functions, captured?)
        for fn, capturable in phases[n_prefix:]:
            if self.rest and self.rest[-1][1] == capturable:
                self.rest[-1][0].append(fn)
            else:
                self.rest.append(([fn], capturable))
        self.shape_graphs: dict = {}
        self.rest_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _forward_backward(self, batch: torch.Tensor) -> torch.Tensor:
        """-> [loss, *sums]: one output tensor, so a replay's results cost one copy."""
        loss, sums = self.loss_fn(batch)
        # the gradients, copied into the fixed-address .grad tensors by one foreach kernel: backward()
        # would add each into a zeroed .grad, one kernel per parameter (a tenth of a mod-97 step's
        # kernels); a copy of x and 0 + x are the same values
        grads = torch.autograd.grad(loss, self.params)
        torch._foreach_copy_([p.grad for p in self.params], grads)
        loss = loss.detach().reshape(1)
        return loss if sums is None else torch.cat([loss, sums.to(loss.dtype)])

    def _capture_shape(self, batch: torch.Tensor):
        static_batch = batch.clone()
        _side_stream_warmup(lambda: self._forward_backward(static_batch), self.warmup_iters)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self._forward_backward(static_batch)
            for fn in self.prefix:
                fn()
        return graph, static_batch, static_out

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = tuple(batch.shape)
        if key not in self.shape_graphs:
            self.shape_graphs[key] = self._capture_shape(batch)
        graph, static_batch, static_out = self.shape_graphs[key]
        static_batch.copy_(batch)
        graph.replay()
        out = static_out.clone()
        for i, (fns, capturable) in enumerate(self.rest):
            if not capturable:
                for fn in fns:
                    fn()
                continue
            if i not in self.rest_graphs:  # captured after its first eager run below
                for fn in fns:
                    fn()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    for fn in fns:
                        fn()
                self.rest_graphs[i] = graph
                continue
            self.rest_graphs[i].replay()
        return out[0], (out[1:] if len(out) > 1 else None)


class GraphedEvaluate:
    """Replays a task's evaluate() as CUDA graphs, one per eval_graph_key (a fixed computation over
    fixed tensors; stage_eval() refreshes the step-dependent ones before each replay).

    The graphs share one memory pool (IMDb captures one per batch width), as repro/memory.py budgets
    evaluation: safe because they replay one at a time on one stream and a call clones its results
    before another graph can overwrite them."""

    def __init__(self, task):
        self.task = task
        self.graphs: dict = {}  # key -> (graph, names, static results)
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, step: int, key) -> None:
        """Capture the graph for `key` (staging `step`'s inputs) without replaying it; no-op if it exists."""
        if key in self.graphs:
            return
        self.task.stage_eval(step)
        _side_stream_warmup(lambda: self.task.evaluate(step), 1)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.task.evaluate(step)
            names = list(out)
            static = torch.stack([out[n].float() for n in names])
        self.graphs[key] = (graph, names, static)

    def __call__(self, step: int, key) -> dict[str, torch.Tensor]:
        self.capture(step, key)
        self.task.stage_eval(step)
        graph, names, static = self.graphs[key]
        graph.replay()
        return dict(zip(names, static.clone().unbind()))
