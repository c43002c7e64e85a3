"""Members -> groups -> jobs (commands) -> devices.

A group is a set of members that train as one population (issue 19, repro/population.py): same task,
same config except the keys a population sets per member (MEMBER_FIELDS), the same step to resume at,
and a size capped by memory. Tasks that do not stack (IMDb's cuDNN LSTM, QM9's message passing) make
one group per member. `group_commands` turns a group into the job that trains it: one population
command for a group of several members, a solo run for a group of one. Jobs are spread over the
devices by their work (steps).
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from repro import checkpoint as ckpt
from repro.errors import UserError
from repro.memory import OVERHEAD, estimate_bytes
from repro.metrics import atomic_write_text
from repro.population import MEMBER_FIELDS, STACKABLE_TASKS, unsupported_flags
from repro.sweep_spec import Member, Sweep, task_classes

CUDA_CONTEXT_MB = 500  # a process's CUDA context and kernels, outside what torch allocates
USABLE_FRACTION = 0.9  # of a GPU's memory, for the runs a sweep places on it


def stackable(task: str) -> bool:
    return task in STACKABLE_TASKS


def stacks(member: Member) -> bool:
    """Whether the member can train in a population: a stackable task, and nothing the population would
    silently train otherwise than the solo run (population.unsupported_flags)."""
    return stackable(member.cfg.task) and not unsupported_flags(member.cfg)


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
    none and ema stack; MA members stack with each other (window_size is then shared); the population
    refuses a mix of the two."""
    cfg = member.cfg.to_dict()
    family = "ma" if cfg["filter"] == "ma" else "ema"
    return (family,) + tuple((k, v) for k, v in cfg.items() if k not in MEMBER_FIELDS)


def resume_step(run_dir: Path) -> int | str:
    """The step a member's run resumes at: its checkpoint's, 0 without one. A population's members must all
    be at one step, and a re-run packs the members left anew (fewer, or under other caps), so members of
    populations killed at different steps must not meet in one group. An unreadable checkpoint: a key of
    its own, so that only its member's command fails (saying why)."""
    path = run_dir / ckpt.FILENAME
    if not path.exists():
        return 0
    try:
        return int(ckpt.load(path, torch.device("cpu"))["step"])
    except UserError:
        return f"unreadable {run_dir.name}"


def resume_steps(sweep_dir: Path, members: list[Member]) -> dict[str, int | str]:
    """resume_step of each member that can join a population, by name."""
    return {m.name: resume_step(sweep_dir / m.name) for m in members if stacks(m)}


def pack(members: list[Member], max_members: int, max_bytes: int | None = None,
         device_type: str = "cuda", steps: dict[str, int | str] | None = None) -> list[Group]:
    """Groups of compatible members, each at most `max_members` and `max_bytes` on a `device_type` device
    (None: no memory cap), split evenly (75 members under a cap of 64 make 38 + 37, not 64 + 11).
    `steps`: each member's resume step (resume_steps; missing: 0); members at different steps never
    share a group."""
    steps = steps or {}
    groups, buckets = [], {}
    for m in members:
        if stacks(m):
            buckets.setdefault((steps.get(m.name, 0), group_key(m)), []).append(m)
        else:
            groups.append(Group([m]))
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
    order = {m.name: i for i, m in enumerate(members)}
    return sorted(groups, key=lambda g: order[g.members[0].name])  # in the sweep's order, for a readable plan


def slots(device: str, per_device: int, job_bytes: int, device_bytes: int | None) -> int:
    """How many jobs run at once on `device`: `per_device`, fewer where their memory would not fit."""
    if device_bytes is None:
        return per_device
    return max(1, min(per_device, int(device_bytes * USABLE_FRACTION) // job_bytes))


@dataclass
class Job:
    """One child command (without its device), the members it trains, the file its output goes to, and
    the files (path, text) it reads, written by write_job_files before it runs (not by a dry run)."""
    argv: tuple
    members: tuple
    log: Path
    files: tuple = ()
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
    """The commands that train `group`: one population command for several members that stack, else a
    solo run per member. Both run with --skip_finished: a finished member is skipped (a population
    leaves it out), an interrupted one resumes from its checkpoint."""
    members = list(group.members)
    if len(members) > 1 and all(stacks(m) for m in members):
        return [population_job(sweep, members, sweep_dir)]
    return [solo_job(sweep, m, sweep_dir) for m in members]


def solo_job(sweep: Sweep, member: Member, sweep_dir: Path) -> Job:
    config = member_config_path(sweep_dir, member)
    argv = (sys.executable, str(sweep.entry_point), "--config", str(config), "--out_dir",
            str(sweep_dir / member.name), "--progress", "false", "--skip_finished", "true")
    files = ((config, yaml.safe_dump(member.config_dict(), sort_keys=False)),)
    return Job(argv, (member,), sweep_dir / "logs" / f"{member.name}.log", files)


def population_job(sweep: Sweep, members: list[Member], sweep_dir: Path, files_dir: Path | None = None) -> Job:
    """`<entry point> --config <base> --population <members>`: the base is the first member's config
    (the entry point validates it alone, before the members' overrides: a base without the members' keys
    could be invalid, e.g. Nesterov with the default momentum 0); each member lists the keys that differ
    in the group, its seed and its folder (sweep_dir / its name). The files are named after the first
    member, in files_dir (default sweep_dir / populations)."""
    configs = [m.config_dict() for m in members]
    differing = [k for k in configs[0] if any(c[k] != configs[0][k] for c in configs[1:])]
    shared_only = [k for k in differing if k not in MEMBER_FIELDS]
    if shared_only:  # pack() splits on these: a group that differs in one was not made by it
        raise ValueError(f"the members of a group differ in {shared_only}, which a population's members share")
    listing = [{**{k: c[k] for k in differing if k != "seed"}, "seed": m.seed, "out_dir": str(sweep_dir / m.name)}
               for m, c in zip(members, configs)]
    name = f"population_{members[0].name}"
    files_dir = files_dir or sweep_dir / "populations"
    base, member_file = files_dir / f"{name}.yaml", files_dir / f"{name}.members.yaml"
    argv = (sys.executable, str(sweep.entry_point), "--config", str(base), "--population", str(member_file),
            "--progress", "false", "--skip_finished", "true")
    files = ((base, yaml.safe_dump(configs[0], sort_keys=False)),
             (member_file, yaml.safe_dump(listing, sort_keys=False)))
    return Job(argv, tuple(members), sweep_dir / "logs" / f"{name}.log", files)


def write_job_files(jobs: list[Job]) -> None:
    """The files the jobs' commands read, and their log folders."""
    for job in jobs:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        for path, text in job.files:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
