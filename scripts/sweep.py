#!/usr/bin/env python3
"""Run a sweep: a grid of configs x seeds of one task, resumable, on the local devices or on Ray.

    python scripts/sweep.py configs/sweeps/tiny.yaml --devices cpu
    python scripts/sweep.py configs/sweeps/alpha_lamb_wd0.005.yaml                # every visible GPU
    python scripts/sweep.py configs/sweeps/alpha_lamb_wd0.005.yaml --backend ray --address HOST:6379

The sweep file's format is below. Output: <results_dir>/sweeps/<name>/ (results_dir: runs/ by default,
git-ignored) holds a run folder per member (named as its solo run's), sweep.yaml (the expanded sweep,
which a later invocation must match), sweep.csv (a row per member), populations/ (each population's base
config and member list), configs/ (the config of each member that runs alone) and logs/ (each command's
output). Members of mod-97 and MNIST that may share a population (repro/population.py: they differ only in
per-member keys) train as one, up to --max_group at a time; IMDb and QM9 members run alone. The same
command again skips finished members and resumes the others from their last checkpoint (checkpoint_every
in the sweep bounds what a crash loses); Ctrl-C lets the running members save a checkpoint first.
Figures: scripts/plot_sweep.py.
Exit status: 0 all finished, 1 some member did not finish, 2 bad input, 130 interrupted.
"""
import argparse
import fcntl
import re
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repro.errors import UserError  # noqa: E402
from repro.sweep_backends import Progress, connect_ray, run_local, run_ray  # noqa: E402
from repro.sweep_pack import (USABLE_FRACTION, assign_devices, device_type, group_commands, pack,  # noqa: E402
                              resume_steps, slots, write_job_files)
from repro import sweep_spec  # noqa: E402
from repro.sweep_spec import load_sweep, store_or_check_spec  # noqa: E402
from repro.sweep_table import is_finished, write_table  # noqa: E402

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
DEFAULT_PER_DEVICE = {"cuda": 8, "cpu": 1}  # 8 solo runs shared an H200 in the table sittings


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, as the entry points
        raise UserError(f"bad command line: {message}")


def parse_args(argv):
    parser = _Parser(description=f"{__doc__}\nThe sweep file (repro/sweep_spec.py):\n\n{sweep_spec.__doc__.split(chr(10), 2)[2]}",
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("sweep_file", help="a sweep file, e.g. configs/sweeps/tiny.yaml")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: a new local one)")
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu or cuda:N ... (default: every visible GPU, else cpu; Ray: cpu or its GPUs)")
    parser.add_argument("--per_device", type=int, default=None,
                        help="jobs at once per device, fewer if memory is short (default: 8 on a GPU, 1 on cpu)")
    parser.add_argument("--max_group", type=int, default=64, help="members per population at most")
    parser.add_argument("--results_dir", default="runs",
                        help="default runs/ (git-ignored), as the reproduce scripts; results/ for committed runs")
    parser.add_argument("--dry_run", action="store_true", help="print the plan; run and write nothing")
    parser.add_argument("--progress", default="true", choices=("true", "false"))
    args = parser.parse_args(argv)
    for device in args.devices or []:
        if not DEVICE.fullmatch(device):
            raise UserError(f"bad command line: --devices: {device!r} is not cpu or cuda:N")
    if args.devices and len({d == "cpu" for d in args.devices}) > 1:
        raise UserError("bad command line: --devices mixes cpu and cuda")
    if args.devices and len(set(args.devices)) != len(args.devices):
        raise UserError("bad command line: --devices repeats a device (use --per_device)")
    if args.per_device is not None and args.per_device < 1:
        raise UserError("bad command line: --per_device must be >= 1")
    if args.max_group < 1:
        raise UserError("bad command line: --max_group must be >= 1")
    if args.address and args.backend != "ray":
        raise UserError("bad command line: --address is for --backend ray")
    return args


def local_devices(requested: list[str] | None, check: bool) -> list[str]:
    import torch

    count = torch.cuda.device_count()
    devices = requested or ([f"cuda:{i}" for i in range(count)] or ["cpu"])
    for device in devices:
        index = int(device.split(":")[1]) if ":" in device else 0
        if check and device.startswith("cuda") and index >= count:
            raise UserError(f"device {device} not found ({count} CUDA devices visible)")
    return [f"{d}:0" if d == "cuda" else d for d in devices]


def device_bytes(device: str) -> int | None:
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():  # a dry run planning for GPUs this machine lacks
        return 80 * 2**30
    return torch.cuda.get_device_properties(int(device.split(":")[1]) if ":" in device else 0).total_memory


def ray_device(requested: list[str] | None) -> str:
    """Ray places the runs; the sweep only says cpu or cuda (each task then sees its GPUs as cuda:0...)."""
    if requested == ["cpu"]:
        return "cpu"
    if requested:
        raise UserError("bad command line: with --backend ray, --devices is cpu or left out (Ray places runs)")
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def hold_lock(sweep_dir: Path):
    """One runner per sweep folder: a second would start the same members into the same folders."""
    handle = open(sweep_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"another sweep.py is running the sweep in {sweep_dir}") from None
    return handle


@dataclass
class Plan:
    groups: list
    jobs: list  # each with its device
    slots: dict  # device -> jobs at once
    per_device: int
    kind: str  # cpu or cuda


def make_plan(sweep, sweep_dir: Path, todo: list, devices: list[str], per_device: int | None, max_group: int,
              memory: dict[str, int | None]) -> Plan:
    """Groups (capped so that `per_device` of them fit on the smallest device; members that resume at
    different steps apart), their jobs spread over `devices`, and how many jobs run at once on each."""
    kind = device_type(devices[0])
    per_device = per_device or DEFAULT_PER_DEVICE[kind]
    known = [b for b in memory.values() if b is not None]
    max_bytes = int(min(known) * USABLE_FRACTION / per_device) if known else None
    groups = pack(todo, max_group, max_bytes, kind, resume_steps(sweep_dir, todo))
    jobs = assign_devices([job for group in groups for job in group_commands(sweep, group, sweep_dir)], devices)
    job_bytes = max((job.bytes(kind) for job in jobs), default=1)
    return Plan(groups, jobs, {d: slots(d, per_device, job_bytes, memory[d]) for d in devices}, per_device, kind)


def main(argv=None) -> int:
    ray_started, lock = False, None
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        sweep = load_sweep(args.sweep_file)
        sweep_dir = sweep.folder(Path(args.results_dir).resolve())
        store_or_check_spec(sweep, sweep_dir, write=not args.dry_run)
        lock = None if args.dry_run else hold_lock(sweep_dir)
        todo = [m for m in sweep.members if not is_finished(sweep_dir / m.name)]
        if args.backend == "ray" and not args.dry_run:
            ray_started = connect_ray(args.address)
            devices = [ray_device(args.devices)]
        elif args.backend == "ray":
            devices = args.devices or ["cuda"]
        else:
            devices = local_devices(args.devices, check=not args.dry_run)
        plan = make_plan(sweep, sweep_dir, todo, devices, args.per_device, args.max_group,
                         {d: device_bytes(d) for d in devices})
        where = (f"Ray ({plan.kind})" if args.backend == "ray"
                 else ", ".join(f"{d} ({n} at once)" for d, n in plan.slots.items()))
        print(f"sweep {sweep.name}: {len(sweep.members)} members, {len(sweep.members) - len(todo)} finished; "
              f"{len(todo)} to run in {len(plan.groups)} groups as {len(plan.jobs)} commands on {where}; "
              f"folder {sweep_dir}")
        if args.dry_run:
            for job in plan.jobs:
                print(shlex.join(job.command))
            return 0
        interrupted = False
        if todo:
            write_job_files(plan.jobs)
            interrupted = _run(args, plan, sweep, sweep_dir, len(todo))
        path, table = write_table(sweep, sweep_dir)
    except UserError as exc:
        print("error: " + str(exc).replace("\n", "\\n"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any run started", file=sys.stderr)
        return 130
    finally:
        if lock:
            lock.close()
        if ray_started:
            import ray

            ray.shutdown()
    finished = int((table["status"] == "finished").sum())
    print(f"sweep {sweep.name}: {finished}/{len(table)} members finished; table {path}")
    if interrupted:
        print("interrupted: run the same command again to finish the sweep", file=sys.stderr)
        return 130
    if finished < len(table):
        print(f"{len(table) - finished} members did not finish (their output: {sweep_dir / 'logs'}); run the "
              f"same command again to resume them", file=sys.stderr)
        return 1
    return 0


def _run(args, plan: Plan, sweep, sweep_dir: Path, n_todo: int) -> bool:
    """Run the plan's jobs under one progress bar; True when interrupted."""
    def stop(signum, frame):  # SIGTERM as Ctrl-C: the children save a checkpoint, the runner waits for them
        raise KeyboardInterrupt
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    progress = Progress(len(sweep.members), len(sweep.members) - n_todo, sweep_dir, args.progress == "true")
    try:
        if args.backend == "ray":
            return run_ray(plan.jobs, 1.0 / plan.per_device if plan.kind == "cuda" else 0.0, progress)
        return run_local(plan.jobs, plan.slots, progress)
    finally:
        progress.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_handler)


if __name__ == "__main__":
    sys.exit(main())
