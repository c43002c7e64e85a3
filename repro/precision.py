"""Mixed precision for the engine: `--amp none|fp16|bf16`, and `--tf32` for CUDA matmuls.

The forward (the task's loss) runs under torch.autocast; parameters, gradients, optimizer and filter
state stay fp32. fp16 adds a GradScaler: the loss is scaled before backward, and the gradients are
unscaled (`unscale_`) BEFORE clipping and the Grokfast filter, so both see true gradients (the
reference's issue #10). On an overflow step `scaler.step` skips `optimizer.step`; the engine then runs
the filter as an optimizer step pre-hook (GradFilter.attach), so a skipped step leaves the filter
state alone too (fused optimizers are off under fp16: the scaler always calls those). bf16 has fp32's
range and needs no scaler.
"""
import contextlib

import torch

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def set_tf32(on: bool) -> None:
    """--tf32: the process-wide switch for CUDA matmuls (no effect on a CPU), set both ways so that a run's
    precision is its config's whatever the process did before. cuDNN keeps torch's default (TF32 allowed
    for convolutions and RNNs), as every earlier run of IMDb's LSTM had it: its GEMMs run on TF32 tensor cores."""
    torch.backends.cuda.matmul.allow_tf32 = on


class Precision:
    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device_type = mode, device.type
        self.dtype = AMP_DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self):
        """The forward's autocast. Without its cache of weight casts: a CUDA graph cannot capture that
        cache (torch's CUDA-graph notes), and these models use each weight once per forward anyway."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)  # skips optimizer.step when unscale_ found inf/nan
            self.scaler.update()
        else:
            optimizer.step()

    def skip(self) -> None:
        """A step the engine drops after unscale_: the scaler still has to close its iteration."""
        if self.scaler:
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
