"""Milliseconds per IMDb training step, with the shared padding prefix run once or not, 1 or N runs at once.

An IMDb step as main_imdb.py runs it: one update (repro.step.StepRunner, CUDA graphs on CUDA) and the
evaluations after it (the per-step validation batch of 50, and the whole splits every `eval_every` updates).
Modes:
  prefix   the task as it trains: the leading padding that every row of a forward shares runs once, for
           one row (SentimentLSTM's pad_prefix: a batch's own, 125-375 of 500 steps on the paper's data,
           one CUDA graph per multiple of 25; a whole split's for the whole-split evaluations, 150-152 for seed 0);
  static   every batch with its split's shared padding (152 training, 150 validation), one graph;
  plain    no prefix: every row runs all 500 steps;
  plain_fp32  as plain, with torch.backends.cudnn.allow_tf32 = False (cuDNN's LSTM may otherwise use TF32
           tensor cores: the engine leaves cuDNN at torch's default, TF32 allowed).
Each layout starts N worker processes at once (under CUDA MPS if a daemon runs: start it first, as
scripts/run_on_gpu.sh does; `--sm_percent` sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE for N > 1, as the
sittings give IMDb runs); each worker warms up (the graphs captured, one whole-split evaluation), then times
--steps steps between two synchronisations. A row: mode, processes, each worker's ms per step, their mean.

    python scripts/bench_imdb.py --out results/bench/imdb_prefix_h200.json       # on a GPU, ~3 min
    python scripts/bench_imdb.py --device cpu --processes 1 --steps 2 --warmup 1 --task_flags="--seq_len 40"
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from repro.metrics import run_header  # noqa: E402

MODES = ("prefix", "static", "plain", "plain_fp32")


def worker(args) -> dict:
    from repro.config import load_config
    from repro.step import StepRunner
    from repro.tasks.imdb import ImdbConfig, ImdbTask

    torch.backends.cudnn.allow_tf32 = args.mode != "plain_fp32"
    cfg = load_config(ImdbConfig, ["--config", args.config, "--device", args.device, "--progress", "false",
                                   *shlex.split(args.task_flags)])
    device = torch.device(args.device)
    task = ImdbTask(cfg, device)
    prefixes = {"train": task.train_prefix, "val": task.val_prefix}
    if args.mode != "prefix":
        task.prefix_step = None  # every batch at train_prefix
    if args.mode.startswith("plain"):
        task.train_prefix = task.val_prefix = 0
    runner = StepRunner(cfg, task, device, None)

    def steps(first: int, count: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for step in range(first, first + count):
            runner.train_step(step)
            runner.evaluate(step + 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    steps(0, args.warmup)
    wall = steps(args.warmup, args.steps)
    return {"ms_per_step": 1000 * wall / args.steps, "data_prefixes": prefixes}


def layout(mode: str, processes: int, args) -> dict:
    env = dict(os.environ)
    if processes > 1 and args.sm_percent:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.sm_percent)
    command = [sys.executable, __file__, "--worker", "--mode", mode, "--device", args.device, "--config", args.config,
               "--steps", str(args.steps), "--warmup", str(args.warmup), f"--task_flags={args.task_flags}"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    row = {"mode": mode, "processes": processes, "sm_percent": env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")}
    if any(p.returncode for p in procs):
        return {**row, "error": f"worker exit codes {[p.returncode for p in procs]}"}
    workers = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    ms = [w["ms_per_step"] for w in workers]
    return {**row, "data_prefixes": workers[0]["data_prefixes"], "ms_per_step": ms,
            "mean_ms_per_step": sum(ms) / len(ms)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 9], help="runs at once, a layout each")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=60, help="untimed steps first (>= 51: one whole-split "
                        "evaluation, and the graphs captured)")
    parser.add_argument("--config", default="configs/imdb/grokfast.yaml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sm_percent", type=int, default=25, help="MPS active thread percentage of each run "
                        "when several run at once (0: none)")
    parser.add_argument("--task_flags", default="", help="more main_imdb.py flags, one string")
    parser.add_argument("--out", help="write the rows and a header here (JSON)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="prefix", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    header = run_header(torch.device(args.device))
    header["mps_daemon"] = subprocess.run(["pgrep", "-x", "nvidia-cuda-mps"], capture_output=True).returncode == 0
    rows = []
    for processes in args.processes:
        for mode in args.modes:
            rows.append(layout(mode, processes, args))
            r = rows[-1]
            shown = f"{r['mean_ms_per_step']:.2f} ms/step" if "error" not in r else r["error"]
            print(f"{mode:10s} x{processes}: {shown}", flush=True)
    by = {(r["mode"], r["processes"]): r.get("mean_ms_per_step") for r in rows}
    for processes in args.processes:
        if by.get(("plain", processes)) and by.get(("prefix", processes)):
            print(f"x{processes}: prefix / plain = {by[('prefix', processes)] / by[('plain', processes)]:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"benchmark": "imdb_prefix", "header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
