"""Checkpoints: atomic save/load of a run's whole state, and the RNG states that go with it."""
import os
import random
from pathlib import Path

import numpy as np
import torch

from repro.errors import UserError

FILENAME = "checkpoint.pt"
# options a resumed run may change; any other difference means it is not the same run
MAY_CHANGE_ON_RESUME = {"resume", "skip_finished", "cuda_graphs", "compile", "max_steps", "progress", "device", "checkpoint_every", "log_every_evals",
                        "out_dir", "results_dir", "data_dir", "early_stop_acc", "early_stop_patience", "budget"}


def save(state: dict, path: Path) -> None:
    """torch.save to a temp file, fsync, then rename: a kill mid-write leaves the old checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which, in one line
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


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
