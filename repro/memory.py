"""The memory a run needs, estimated from its config before anything is allocated.

A run that cannot fit stops with one line (exit 2) naming the estimate and what is available, instead
of an allocator traceback after minutes of building. The estimate adds up:
  - the parameters (float32) and their gradients;
  - the optimizer's state: Adam / AdamW two tensors per parameter, SGD with momentum one;
  - the Grokfast filter's state: EMA one tensor per parameter, MA a ring of `window_size` gradients
    plus their running sum;
  - what the task keeps on the device (its data) and a rough bound of the activations of a training
    step and of an evaluation, from the task's closed-form `footprint(cfg)` (a classmethod of each
    task), so the answer is instant for any size.
The same numbers serve a sweep runner that packs runs onto one device (`estimate_bytes`).
"""
import os
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from repro.errors import UserError

FLOAT = 4  # bytes of a float32
LONG = 8  # bytes of an int64
# beside the tensors counted here: CUDA's workspaces (cuBLAS, cuDNN, the caching allocator's rounding), or
# on the host the libraries a run still loads after its config is read (the engine, pandas, PyG)
OVERHEAD = {"cuda": 256 * 2**20, "cpu": 512 * 2**20}


class Footprint(NamedTuple):
    """What a task's config implies, in closed form (see each task's `footprint` classmethod)."""

    params: int  # number of parameters (float32)
    data: int  # bytes of data the task keeps on the device
    train_activations: int  # bytes a training step's forward and backward hold at their peak (rough)
    eval_activations: int  # bytes an evaluation holds at its peak (rough)


def resolve_device_name(name: str) -> tuple[str, int | None] | None:
    """(device type, CUDA index) the run will use, as the engine resolves it; None when the device
    cannot be used at all (the engine then says why)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu", None
    if not torch.cuda.is_available():
        return None
    index = int(name.partition(":")[2]) if ":" in name else _env_int("LOCAL_RANK", 0)  # a rank's GPU
    return ("cuda", index) if index < torch.cuda.device_count() else None


def _env_int(name: str, default: int) -> int:
    """A torchrun variable; a value that is not an integer counts as unset (the engine reports it)."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def breakdown(cfg, task_cls, device_type: str = "cpu") -> dict[str, int]:
    """Bytes by part: parameters, gradients, optimizer state, filter state, data, activations."""
    fp = task_cls.footprint(cfg)
    params = fp.params * FLOAT
    if cfg.optimizer in ("Adam", "AdamW"):
        optimizer = 2 * params
    else:
        optimizer = params if cfg.momentum else 0
    if cfg.filter in ("ema", "ema_highpass"):  # one EMA per parameter either way
        filter_state = params
    elif cfg.filter == "ma":
        filter_state = (cfg.window_size + 1) * params
    else:
        filter_state = 0
    if device_type == "cuda" and cfg.cuda_graphs:  # a captured step and evaluation keep separate pools
        activations = fp.train_activations + fp.eval_activations
    else:
        activations = max(fp.train_activations, fp.eval_activations)
    return {"parameters": params, "gradients": params, "optimizer state": optimizer, "filter state": filter_state,
            "data": fp.data, "activations": activations}


def estimate_bytes(cfg, task_cls, device_type: str | None = None) -> int:
    """Bytes the run of `cfg` needs on its device (`device_type` 'cpu' or 'cuda'; None: from cfg.device)."""
    if device_type is None:
        resolved = resolve_device_name(cfg.device)
        device_type = resolved[0] if resolved else "cpu"
    return sum(breakdown(cfg, task_cls, device_type).values()) + OVERHEAD[device_type]


def available_bytes(device_type: str, index: int | None = None) -> int | None:
    """Free memory on the device: CUDA's free memory, or the host's MemAvailable (within a cgroup's
    limit, if one is set); None when it cannot be read."""
    if device_type == "cuda":
        import torch

        try:
            return torch.cuda.mem_get_info(index)[0]
        except RuntimeError:
            return None
    candidates = [_meminfo_available(), *_cgroup_headroom()]
    candidates = [c for c in candidates if c is not None]
    if not candidates:
        try:
            candidates = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(candidates)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> list[int]:
    """limit - usage of this process's memory cgroup (v2, then v1), where a limit is set."""
    out = []
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:  # v1 writes "no limit" as a huge number
                out.append(max(int(limit) - int(usage), 0))
        except (OSError, ValueError):
            continue
    return out


def format_bytes(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    power = min(max(n.bit_length() - 1, 0) // 10, len(units) - 1)
    if power == 0:
        return f"{n} B"
    return f"{_number(Decimal(n) / 1024**power)} {units[power]}"


def _number(x: Decimal | int) -> str:
    """Three significant digits, also beyond a float's range (--num_layers 1e308 is an int)."""
    return f"{float(x):.3g}" if abs(x) < 10**300 else f"{Decimal(x):.2e}"


def check_fits(cfg, task_cls) -> None:
    """Raise UserError when the run of `cfg` cannot fit in its device's free memory. A task without a
    footprint, a device the engine will refuse, or an unreadable free-memory figure: no check."""
    if not hasattr(task_cls, "footprint"):
        return
    resolved = resolve_device_name(cfg.device)
    if resolved is None:
        return
    device_type, index = resolved
    parts = breakdown(cfg, task_cls, device_type)
    needed = sum(parts.values()) + OVERHEAD[device_type]
    if device_type == "cpu":  # data-parallel ranks on one host share its memory
        needed *= max(_env_int("LOCAL_WORLD_SIZE", 1), 1)
    available = available_bytes(device_type, index)
    if available is None or needed <= available:
        return
    device = "cpu" if device_type == "cpu" else f"cuda:{index}"
    largest = sorted(((v, k) for k, v in parts.items() if v), reverse=True)[:3]
    detail = ", ".join(f"{k} {format_bytes(v)}" for v, k in largest)
    params = _number(parts["parameters"] // FLOAT)
    raise UserError(f"this run needs about {format_bytes(needed)} of memory on {device} ({detail}; "
                    f"{params} parameters), but only {format_bytes(available)} is available: "
                    f"reduce the sizes in the config")
