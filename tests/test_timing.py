"""The clock's 'now' reading waits for the GPU: a CUDA event recorded after a synchronize may still be
pending, and reading its elapsed time then raises (seen under MPS with 27 runs sharing an H100)."""
import pytest
import torch

from repro.timing import Clock

CUDA = torch.cuda.is_available()


def test_seconds_now_is_monotonic_on_cpu():
    clock = Clock(torch.device("cpu"))
    first = clock.seconds_now()
    assert 0.0 <= first <= clock.seconds_now()


@pytest.mark.skipif(not CUDA, reason="no CUDA")
def test_seconds_now_waits_for_pending_gpu_work():
    clock = Clock(torch.device("cuda"))
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):  # queue ~tens of ms of work, so a mark recorded now is still pending
        x = x @ x
        x = x / x.norm()
    assert clock.seconds_now() > 0.0
