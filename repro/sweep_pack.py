"""Members -> groups -> jobs (commands) -> devices.

A group is a set of members that could train as one population (issue 19): same task, same config
except the keys a population sets per member, and a size capped by memory. Tasks that do not stack
(IMDb's cuDNN LSTM, QM9's message passing) make one group per member. `group_commands` turns a group
into the jobs that train it: today one solo run per member; once populations land, one population
command for a stackable group. Jobs are spread over the devices by their work (steps).
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from repro.memory import OVERHEAD, estimate_bytes
from repro.metrics import atomic_write_text
from repro.sweep_spec import Member, Sweep, task_classes

# which tasks stack, and what a population may set member by member (issue 19); every other key is shared
# by a group. To be taken from the population module once it lands, so the two cannot disagree.
STACKABLE_TASKS = ("modular", "mnist")
PER_MEMBER_KEYS = frozenset({"seed", "label", "lr", "weight_decay", "beta1", "beta2", "momentum", "filter",
                             "alpha", "lamb", "clip_grad_norm", "early_stop_acc", "early_stop_patience"})
CUDA_CONTEXT_MB = 500  # a process's CUDA context and kernels, outside what torch allocates
USABLE_FRACTION = 0.9  # of a GPU's memory, for the runs a sweep places on it


def stackable(task: str) -> bool:
    return task in STACKABLE_TASKS


def member_bytes(member: Member, device_type: str) -> int:
    """Device memory of one member's own tensors: repro.memory's estimate less its per-process overhead."""
    return estimate_bytes(member.cfg, task_classes(member.cfg.task)[1], device_type) - OVERHEAD[device_type]


def process_bytes(device_type: str) -> int:
    """What each child process needs on its device besides its members."""
    return OVERHEAD[device_type] + (CUDA_CONTEXT_MB * 2**20 if device_type == "cuda" else 0)


def device_type(device: str) -> str:
    return "cpu" if device == "cpu" else "cuda"


@dataclass
class Group:
    members: list


def group_key(member: Member) -> tuple:
    """Members with equal keys may share a population. An unfiltered member is an EMA member with λ 0, so
    none and ema stack; MA members stack with each other (window_size is then shared)."""
    cfg = member.cfg.to_dict()
    family = "ma" if cfg["filter"] == "ma" else "ema"
    return (family,) + tuple((k, v) for k, v in cfg.items() if k not in PER_MEMBER_KEYS)


def pack(members: list[Member], max_members: int, max_bytes: int | None = None,
         device_type: str = "cuda") -> list[Group]:
    """Groups of compatible members, each at most `max_members` and `max_bytes` on a `device_type` device
    (None: no memory cap), split evenly (75 members under a cap of 64 make 38 + 37, not 64 + 11)."""
    if not members:
        return []
    if not stackable(members[0].cfg.task):
        return [Group([m]) for m in members]
    buckets = {}
    for m in members:
        buckets.setdefault(group_key(m), []).append(m)
    groups = []
    for bucket in buckets.values():
        cap = max_members
        if max_bytes is not None:
            each = max(member_bytes(m, device_type) for m in bucket)
            cap = min(cap, max(1, (max_bytes - process_bytes(device_type)) // each))
        n = math.ceil(len(bucket) / cap)
        size, extra = divmod(len(bucket), n)
        start = 0
        for i in range(n):
            end = start + size + (i < extra)
            groups.append(Group(bucket[start:end]))
            start = end
    return groups


def slots(device: str, per_device: int, job_bytes: int, device_bytes: int | None) -> int:
    """How many jobs run at once on `device`: `per_device`, fewer where their memory would not fit."""
    if device_bytes is None:
        return per_device
    return max(1, min(per_device, int(device_bytes * USABLE_FRACTION) // job_bytes))


@dataclass
class Job:
    """One child command (without its device), the members it trains, and the file its output goes to."""
    argv: tuple
    members: tuple
    log: Path
    device: str = ""  # set by assign_devices

    @property
    def command(self) -> list[str]:
        return [*self.argv, "--device", self.device]

    @property
    def work(self) -> int:
        return sum(m.cfg.steps for m in self.members)

    def bytes(self, device_type: str) -> int:
        return process_bytes(device_type) + sum(member_bytes(m, device_type) for m in self.members)


def assign_devices(jobs: list[Job], devices: list[str]) -> list[Job]:
    """Set each job's device: the largest jobs first, each to the device with the least work so far
    (ties: the first in `devices`). Returns the jobs in their given order."""
    load = {d: 0 for d in devices}
    for job in sorted(jobs, key=lambda j: -j.work):
        job.device = min(devices, key=lambda d: load[d])
        load[job.device] += job.work
    return jobs


def member_config_path(sweep_dir: Path, member: Member) -> Path:
    return sweep_dir / "configs" / f"{member.name}.yaml"


def group_commands(sweep: Sweep, group: Group, sweep_dir: Path) -> list[Job]:
    """The commands that train `group`: the seam for populations. Today one solo run per member (with
    --skip_finished, so a finished member exits at once and an interrupted one resumes from its checkpoint);
    for a stackable task this becomes one population command for the whole group."""
    jobs = []
    for m in group.members:
        argv = (sys.executable, str(sweep.entry_point), "--config", str(member_config_path(sweep_dir, m)),
                "--out_dir", str(sweep_dir / m.name), "--progress", "false", "--skip_finished", "true")
        jobs.append(Job(argv, (m,), sweep_dir / "logs" / f"{m.name}.log"))
    return jobs


def write_member_configs(sweep_dir: Path, members: list[Member]) -> None:
    """Each member's config as the file its command reads (--config)."""
    (sweep_dir / "configs").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    for m in members:
        atomic_write_text(member_config_path(sweep_dir, m), yaml.safe_dump(m.config_dict(), sort_keys=False))
