"""Checkpoints: a run's whole state in one file with a checksum, written atomically, and the RNG states.

File format: one header line `grokfast-checkpoint sha256=<hex of the rest>\n`, then torch.save's bytes.
A checkpoint whose bytes changed after it was written (a flipped bit, a foreign file) fails the check and
is never loaded, so a run cannot resume from it and overwrite good results.
"""
import hashlib
import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from repro.errors import UserError

FILENAME = "checkpoint.pt"
MAGIC = b"grokfast-checkpoint sha256="
REQUIRED_KEYS = ("config", "step", "model", "optimizer", "filter", "rng", "num_records")
# options a resumed run may change; any other difference means it is not the same run
MAY_CHANGE_ON_RESUME = {"resume", "skip_finished", "cuda_graphs", "compile", "max_steps", "progress", "device",
                        "checkpoint_every", "log_every_evals", "out_dir", "results_dir", "data_dir",
                        "early_stop_acc", "early_stop_patience", "budget"}


def save(state: dict, path: Path) -> None:
    """Write to a temp file, fsync, then rename: a kill mid-write leaves the old checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def load(path: Path, device: torch.device) -> dict:
    """The state saved at `path`, after checking its checksum and keys; any problem is one line."""
    def bad(reason: str) -> UserError:
        return UserError(f"checkpoint {path} is unusable ({reason}); nothing was changed")

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise bad(exc.strerror or str(exc)) from None
    header, _, payload = data.partition(b"\n")
    if not header.startswith(MAGIC):
        raise bad("not a checkpoint of this suite: no checksum header")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC):]:
        raise bad("checksum mismatch: the file is corrupted")
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 (the checksum held, so this is a foreign pickle)
        raise bad(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    return state


def check_compatible(saved: dict, cfg) -> None:
    current = cfg.to_dict()
    for key, value in saved.items():
        if key not in MAY_CHANGE_ON_RESUME and current.get(key) != value:
            raise UserError(f"--resume: option '{key}' was {value!r} in the checkpoint, now {current.get(key)!r}")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
