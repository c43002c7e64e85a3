"""Timestamps that cost no host synchronisation: CUDA events on the GPU, perf_counter on the CPU."""
import time

import torch


class Clock:
    """`mark()` now, read `seconds_since_start(mark)` later (after the next sync) at no stall.

    On CUDA a mark is an event recorded in the stream, so it times the GPU's own timeline; the
    host may run ahead of it, and a host clock would misplace evaluations by that lag.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start = self.mark()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def between(self, a, b) -> float:
        """Seconds from mark a to mark b (both must have completed: call after a sync)."""
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def seconds_since_start(self, mark) -> float:
        return self.between(self.start, mark)

    def seconds_now(self) -> float:
        """Seconds from the start to now on this clock's timeline (on CUDA: waits until the GPU gets
        here; a mark recorded after a synchronize may still be pending, and reading it then raises)."""
        mark = self.mark()
        if self.cuda:
            mark.synchronize()
        return self.seconds_since_start(mark)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class StepTimer:
    """Sums the durations of timed spans (training steps, or evaluations) between syncs; a resumed run
    starts from the totals of its earlier segments."""

    def __init__(self, clock: Clock, total_s: float = 0.0, count: int = 0):
        self.clock = clock
        self.pending: list[tuple] = []
        self.total_s = total_s
        self.count = count

    def begin(self):
        return self.clock.mark()

    def end(self, begin_mark) -> None:
        self.pending.append((begin_mark, self.clock.mark()))

    def collect(self) -> None:
        """Fold pending pairs into the total; call right after a sync."""
        for a, b in self.pending:
            self.total_s += self.clock.between(a, b)
        self.count += len(self.pending)
        self.pending.clear()

    def totals(self) -> tuple[float, int]:
        return self.total_s, self.count

    @property
    def mean_ms(self) -> float | None:
        return 1000.0 * self.total_s / self.count if self.count else None
