"""Where a mod-97 population's training update spends its GPU time: torch.profiler's kernel table.

Builds the population as scripts/bench_population.py does (members with seeds 0..M-1, the engine's
stacked optimizer and filter), runs the warm-up updates, then profiles --steps updates and prints the
operators and kernels ranked by their own device time, with each one's share of the total. Modes are
bench_population's without CUDA graphs (a graph replay hides its kernels from the profiler): `eager`,
`compile` (torch.compile of the population's loss) or `engine` (the loss, evaluation, optimizer and
filter compiled, as `compile: true` trains, here without the graphs). Writes one table per layout to
--out_dir.

    python scripts/profile_population.py --sizes 128 --precisions fp32 tf32 --modes eager compile engine
    python scripts/profile_population.py --device cpu --sizes 2 --modes eager --steps 3 \\
        --task_flags="--p 11 --dim 32 --num_heads 2 --batch_size 32"   # a smoke test
"""
import argparse
import datetime
import shlex
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_population import DEFAULT_CONFIG, PRECISIONS, build, cpu_name, default_warmup, set_precision, sync  # noqa: E402
from repro.metrics import git_commit  # noqa: E402


def provenance(device: torch.device, argv: list[str]) -> str:
    """What a table was measured with: the command, the device, torch, the commit and the date."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = shlex.join(["scripts/profile_population.py", *argv])
    return f"{command}; {name}, torch {torch.__version__}, commit {git_commit()}, {when}"


def profile_layout(members: int, precision: str, mode: str, job: dict, steps: int, rows: int, where: str) -> str:
    """The profiler's table of one layout, ranked by self device time (CPU time on a CPU device), under a
    heading that names the layout and `where` (provenance())."""
    device = torch.device(job["device"])
    set_precision(precision)
    spec = dict(layout="population", members=members, precision=precision, mode=mode)
    runner, task, _ = build(spec, job, device)
    runner.use_graphs = False  # `engine` builds with CUDA graphs; their replays would hide the kernels
    warmup = default_warmup(runner.cfg, task)
    for step in range(warmup):
        runner.train_step(step)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for step in range(warmup, warmup + steps):
            runner.train_step(step)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)
    if mode != "eager":
        import torch._dynamo as dynamo
        dynamo.reset()
    return f"# {members} members, {precision}, {mode}: {steps} updates after {warmup} warm-up\n# {where}\n{table}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128], help="population sizes (default 128)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="of fp32 (TF32 off), tf32, bf16 (autocast, as bench_population.py; default fp32)")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compile", "engine"],
                        default=["eager", "compile"])
    parser.add_argument("--steps", type=int, default=20, help="profiled updates per layout (default 20)")
    parser.add_argument("--rows", type=int, default=40, help="table rows (default 40)")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--task_flags", default="", help="flags for the task, e.g. \"--dim 64\"")
    parser.add_argument("--out_dir", type=Path, default=None, help="also write each table here")
    args = parser.parse_args(argv)
    job = {"device": args.device, "config": args.config, "task_flags": shlex.split(args.task_flags)}
    where = provenance(torch.device(args.device), sys.argv[1:] if argv is None else list(argv))
    for members in args.sizes:
        for precision in args.precisions:
            for mode in args.modes:
                text = profile_layout(members, precision, mode, job, args.steps, args.rows, where)
                print(text, flush=True)
                if args.out_dir:
                    args.out_dir.mkdir(parents=True, exist_ok=True)
                    (args.out_dir / f"profile_{members}_{precision}_{mode}.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
