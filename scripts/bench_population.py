"""Run-steps per second of mod-97 populations against one solo run and against separate processes (issue 19).

A run-step is one training update of one model: a population of M members doing S updates in W seconds
makes M * S / W run-steps per second. Layouts (a row each in the JSON):

  solo         one ordinary run's update: repro.step.StepRunner (CUDA graphs on CUDA), as main.py trains;
  population   M members built as the engine builds them (ModularTask(cfg_i) per member with seeds
               0..M-1 -> Population -> PopulationStep, whose optimizer and filter are the stacked ones),
               in a mode: `graph` (PopulationStep's CUDA graphs, as the engine runs it), `eager` (no
               graphs), `compile` (torch.compile of the population's loss, no graphs) or `compile+graph`
               (the compiled loss inside PopulationStep's graphs); the engine's --compile compiles the
               evaluation and the update too, which these modes leave eager: `engine` is that (compile:
               true and CUDA graphs, as the issue-21 sweeps train); `vmap+graph`: as
               `graph`, but through the generic torch.func.vmap path (Population.native off) that tasks
               without population_* methods take, instead of mod-97's batched Decoder;
  processes    N separate `main.py` processes at once, each training one solo run, without and with
               CUDA MPS (a daemon started and stopped here, in a temp folder).

Precision: `fp32` sets torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 to False (strict
fp32), `tf32` both True, `bf16` both False and the config's `amp: bf16` (the loss under autocast, as
the engine runs it; only when --precisions names it); the processes run with torch's
defaults (matmul fp32, as main.py trains).

Timing of the solo and population rows: after the warm-up updates (the engine's lr warm-up, then two
epochs, so the CUDA graphs of both batch shapes are captured and torch.compile has compiled), --steps
updates are timed on the host clock between two synchronisations: run_steps_per_s = M * steps / wall.
These are training updates only (the issue's probe measured those); run_steps_per_s_with_eval times the
same number of further updates with the evaluations the training loop makes among them (mod-97: the
whole validation split every 10 updates, graphed as the engine does), which is what a real run pays
and what the processes' number includes. Peak GPU memory: torch.cuda.max_memory_allocated after a reset
at the start of the layout (tasks, parameters, optimizer and filter state, graphs, activations), and per
member (divided by M).

Processes: run_steps_per_s = the runs' steps summed / the longest run's training wall time (`wall_s`
of its summary.json: from the start of its training loop to its summary, evaluations and logging
included, start-up excluded). Also recorded: the same steps over the span from the first run's
training start to the last run's end (..._span; catches staggered starts) and over launch-to-last-exit
(..._launch_to_exit; start-up and the final plots included).

Output (--out): {"header": device, torch/CUDA versions, git commit, command, date, settings; "rows": one per
layout, each with layout, members, precision, mode, run_steps_per_s, ms_per_step, peak_gpu_mem_mb,
peak_gpu_mem_mb_per_member and the rest of ROW_KEYS (None where not measured), plus `error` or `skipped`;
"comparison": per precision the best population against solo and the processes, and the issue's goals
(>= 20,000 run-steps/s in any precision, >= 8,000 in strict fp32) met or not, from run_steps_per_s}.

Every layout is measured in one of a few worker processes (so a crash, or a CUDA error that leaves the
context unusable, costs that layout only: the next worker goes on with the rest), and the processes
layouts run while no worker holds the GPU. A layout that fails is a row with an `error`; one not run
(the time budget, MPS unavailable, a smaller population out of memory) a row with `skipped`.

    python scripts/bench_population.py                       # the issue's benchmark on one GPU, ~4 min
    python scripts/bench_population.py --sizes 8 64 --modes graph --no_processes
    python scripts/bench_population.py --device cpu --sizes 1 2 --steps 5 --no_processes \\
        --task_flags="--p 11 --dim 32 --num_heads 2 --batch_size 32"   # a smoke test of the script
"""
import argparse
import dataclasses
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from repro.metrics import git_commit  # noqa: E402

DEFAULT_OUT = "results/bench/population_h200.json"
DEFAULT_CONFIG = "configs/modular/ema.yaml"
MODES = ("graph", "eager", "compile", "compile+graph", "engine", "vmap+graph")
PRECISIONS = ("fp32", "tf32", "bf16")
GOAL_ANY, GOAL_FP32 = 20_000, 8_000  # run-steps/s (issue 19)
GRACE_S = 20  # how far past the time budget a running worker or process set may go before it is killed
# tests: "<layout>:<members>:<precision>:<mode>=<fault>[,...]", fault: raise (an error row), broken (that,
# and the worker exits as after an error that broke its CUDA context), crash (the worker dies)
FAULT_ENV = "GROKFAST_BENCH_FAULT"
# seconds a layout is assumed to take before one like it has run (the time guard's estimates)
FIRST_ESTIMATE_S = {"solo": 10.0, "graph": 15.0, "eager": 15.0, "compile": 60.0, "compile+graph": 60.0,
                    "engine": 90.0, "vmap+graph": 15.0}

ROW_KEYS = ("layout", "members", "precision", "mode", "run_steps_per_s", "ms_per_step", "peak_gpu_mem_mb",
            "peak_gpu_mem_mb_per_member", "steps", "warmup_steps", "wall_s", "run_steps_per_s_with_eval",
            "ms_per_step_with_eval", "peak_gpu_mem_mb_with_eval", "batch_assembly_ms", "setup_s", "warmup_s",
            "last_loss_mean")


def compiles(mode: str) -> bool:
    return mode.startswith("compile") or mode == "engine"


def empty_row(spec: dict) -> dict:
    """A row with every key (None where not measured), so all rows have one structure."""
    row = {key: None for key in ROW_KEYS}
    row.update({k: spec[k] for k in ("layout", "members", "precision", "mode")})
    return row


def spec_key(spec: dict) -> str:
    return f"{spec['layout']}:{spec['members']}:{spec['precision']}:{spec['mode']}"


# ---- the worker: solo and population layouts, in a process of its own ---------------------------
def set_precision(precision: str) -> dict:
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def base_config(job: dict):
    from repro.config import load_config
    from repro.tasks.modular import ModularConfig
    return load_config(ModularConfig, ["--config", job["config"], *job["task_flags"], "--device", job["device"],
                                       "--progress", "false"])


def build(spec: dict, job: dict, device: torch.device):
    """(runner, task-like object with is_eval_step/train_batch, batch function) of a layout, built as the
    engine builds it."""
    from repro.cli import population_configs
    from repro.population import Population, check_member_configs
    from repro.population_engine import PopulationStep
    from repro.step import StepRunner
    from repro.tasks.modular import ModularTask

    cfg = base_config(job)
    mode = spec["mode"]
    cfg = dataclasses.replace(cfg, cuda_graphs=mode.endswith("graph") or mode == "engine", compile=mode == "engine",
                              amp="bf16" if spec["precision"] == "bf16" else cfg.amp)
    if spec["layout"] == "solo":
        task = ModularTask(cfg, device)
        runner = StepRunner(cfg, task, device, None)
        return runner, task, task.train_batch
    cfgs = population_configs(cfg, [{"seed": i} for i in range(spec["members"])])  # as main.py --seeds 0..M-1
    check_member_configs(cfgs)
    population = Population([ModularTask(c, device) for c in cfgs])
    population.native = mode != "vmap+graph"  # vmap: the generic path, as tasks without population_* methods
    if mode.startswith("compile"):
        population.loss_and_sums = torch.compile(population.loss_and_sums)
    runner = PopulationStep(cfgs, population, device)
    return runner, population.template, population.train_batch


def default_warmup(cfg, task) -> int:
    """The lr warm-up, then two epochs: both batch shapes' graphs captured, torch.compile done."""
    return cfg.warmup_steps + 2 * task.batches.batches_per_epoch


def timed_steps(runner, task, first: int, steps: int, device: torch.device, with_eval: bool):
    """Wall seconds of updates first .. first+steps-1 (and, with_eval, the loop's evaluations among them);
    the last update's losses."""
    sync(device)
    start = time.perf_counter()
    losses = None
    for step in range(first, first + steps):
        losses, _ = runner.train_step(step)
        if with_eval and task.is_eval_step(step + 1):
            runner.evaluate(step + 1)
    sync(device)
    return time.perf_counter() - start, losses


def measure(spec: dict, job: dict, device: torch.device) -> dict:
    row = empty_row(spec)
    row["tf32_flags"] = set_precision(spec["precision"])
    members, steps = spec["members"], job["steps"]
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        row["base_gpu_mem_mb"] = torch.cuda.memory_allocated(device) / 2**20
    t0 = time.perf_counter()
    runner, task, batch_fn = build(spec, job, device)
    row["cuda_graphs"] = runner.use_graphs  # whether the mode's graphs really ran
    row["setup_s"] = round(time.perf_counter() - t0, 3)
    warmup = job["warmup"] if job["warmup"] is not None else default_warmup(runner.cfg, task)
    row["warmup_steps"], row["steps"] = warmup, steps
    t0 = time.perf_counter()
    for step in range(warmup):
        runner.train_step(step)
    sync(device)
    row["warmup_s"] = round(time.perf_counter() - t0, 3)

    wall, losses = timed_steps(runner, task, warmup, steps, device, with_eval=False)
    row["wall_s"] = round(wall, 4)
    row["ms_per_step"] = 1000.0 * wall / steps
    row["run_steps_per_s"] = members * steps / wall
    row["last_loss_mean"] = float(losses.float().mean())
    row["peak_gpu_mem_mb"] = peak_mb(device)
    if row["peak_gpu_mem_mb"] is not None:
        row["peak_gpu_mem_mb_per_member"] = row["peak_gpu_mem_mb"] / members

    n = min(steps, 100)  # the host's share: the members' batches gathered and stacked
    sync(device)
    t0 = time.perf_counter()
    for step in range(warmup, warmup + n):
        batch_fn(step)
    sync(device)
    row["batch_assembly_ms"] = 1000.0 * (time.perf_counter() - t0) / n

    if job["with_eval"]:
        try:
            first = warmup + steps
            runner.evaluate(first)  # captures the evaluation's graph outside the timed loop
            wall, _ = timed_steps(runner, task, first, steps, device, with_eval=True)
            row["ms_per_step_with_eval"] = 1000.0 * wall / steps
            row["run_steps_per_s_with_eval"] = members * steps / wall
            row["peak_gpu_mem_mb_with_eval"] = peak_mb(device)
        except Exception as exc:  # the training numbers stand
            row["with_eval_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return row


def context_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return float(torch.ones(1, device=device).add_(1).item()) == 2.0
    except Exception:
        return False


def estimate_s(estimates: dict, kind: str, members: int) -> float:
    """Seconds a layout will take, for the time guard: the last one of its kind and size, else the last of
    its kind (twice that when this one is larger), else FIRST_ESTIMATE_S."""
    if (kind, members) in estimates:
        return estimates[(kind, members)][0]
    if kind in estimates:
        seconds, last_members = estimates[kind]
        return seconds * (2.0 if members > last_members else 1.0)
    return FIRST_ESTIMATE_S[kind]


def worker(job_path: str) -> int:
    """Measure the job's specs in order, appending one JSON line per spec (a header line first) to the
    job's rows file; exit 3 when a failure may have left the CUDA context unusable (the parent starts a
    fresh worker for the specs after it)."""
    job = json.loads(Path(job_path).read_text())
    out = open(job["rows"], "w")

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    device = torch.device(job["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        for spec in job["specs"]:
            emit({**empty_row(spec), "error": "CUDA is not available in this process"})
        return 0
    emit({"header": {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
                     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}})
    estimates: dict = {}  # kind and (kind, members) -> (seconds, members) of the last such layout
    too_big: dict[tuple, int] = {}  # (precision, mode) -> the population size that ran out of memory
    for spec in job["specs"]:
        emit({"started": spec_key(spec)})  # a spec begun and never finished crashed the worker
        kind = "solo" if spec["layout"] == "solo" else spec["mode"]
        estimate = estimate_s(estimates, kind, spec["members"])
        if time.time() + estimate > job["deadline"]:
            emit({**empty_row(spec), "skipped": f"time budget: about {estimate:.0f} s needed, "
                                                f"{max(job['deadline'] - time.time(), 0):.0f} s left"})
            continue
        small = too_big.get((spec["precision"], spec["mode"]))
        if spec["layout"] == "population" and small is not None and spec["members"] > small:
            emit({**empty_row(spec), "skipped": f"not tried: a population of {small} ran out of memory"})
            continue
        print(f"[bench] {spec_key(spec)} ...", flush=True)
        started = time.time()
        faults = dict(f.rsplit("=", 1) for f in os.environ.get(FAULT_ENV, "").split(",") if "=" in f)
        try:
            if faults.get(spec_key(spec)) == "crash":
                os._exit(7)
            if faults.get(spec_key(spec)) in ("raise", "broken"):
                raise RuntimeError("injected fault (" + FAULT_ENV + ")")
            row = measure(spec, job, device)
        except torch.cuda.OutOfMemoryError as exc:
            row = {**empty_row(spec), "skipped": f"out of memory: {str(exc).splitlines()[0][:500]}",
                   "peak_gpu_mem_mb": peak_mb(device)}
            too_big[(spec["precision"], spec["mode"])] = spec["members"]
        except Exception as exc:
            row = {**empty_row(spec), "error": f"{type(exc).__name__}: {exc}"[:2000]}
        row["layout_s"] = round(time.time() - started, 2)
        estimates[(kind, spec["members"])] = estimates[kind] = (time.time() - started, spec["members"])
        if compiles(spec["mode"]):
            import torch._dynamo as dynamo
            dynamo.reset()  # the next layout compiles afresh; nothing cached keeps memory
        emit(row)
        summary = row.get("error") or row.get("skipped") or f"{row['run_steps_per_s']:,.0f} run-steps/s"
        print(f"[bench] {spec_key(spec)}: {summary.splitlines()[0][:300]}", flush=True)
        if not context_usable(device) or faults.get(spec_key(spec)) == "broken":
            return 3  # e.g. after a failed capture: a fresh worker measures the rest
        free_memory(device)
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_jsonl(path: Path) -> list[dict]:
    """The lines a worker wrote (a last line cut short by a kill is left out)."""
    objs = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return objs


def run_workers(specs: list[dict], job: dict, tmp: Path, deadline: float, header: dict) -> list[dict]:
    """Rows of `specs`, measured by worker processes: a worker that dies (or is killed past the deadline)
    costs the spec it was measuring, an error row; a fresh worker takes the rest."""
    rows: list[dict] = []
    remaining = list(specs)
    attempt = 0
    tmp = Path(tempfile.mkdtemp(prefix="workers_", dir=tmp))  # this call's files, apart from another call's
    while remaining:
        if time.time() >= deadline:
            rows += [{**empty_row(s), "skipped": "time budget: no time left"} for s in remaining]
            break
        attempt += 1
        rows_path, job_path, err_path = (tmp / f"worker{attempt}.{ext}" for ext in ("jsonl", "json", "err"))
        job_path.write_text(json.dumps({**job, "specs": remaining, "rows": str(rows_path), "deadline": deadline}))
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--worker", str(job_path)], cwd=REPO, stderr=err)
            try:
                rc = proc.wait(timeout=max(deadline + GRACE_S - time.time(), 1))
                killed = False
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its handle
                rc, killed = proc.wait(), True
        lines = read_jsonl(rows_path)
        for obj in lines:
            if "header" in obj:
                header.update({k: v for k, v in obj["header"].items() if v is not None})
        measured = [obj for obj in lines if "layout" in obj]
        crashed = sum("started" in obj for obj in lines) > len(measured)  # a spec begun, never finished
        rows += measured
        remaining = remaining[len(measured):]
        if not remaining:
            break
        tail = err_path.read_text()[-1500:]
        why = (f"killed {GRACE_S} s past the time budget" if killed
               else f"worker exited with code {rc} while measuring it")
        if not crashed and not measured:  # it died before measuring anything: another would too
            rows += [{**empty_row(s), "error": f"not measured: the worker failed (code {rc}); its stderr ends: "
                                               f"{tail}"} for s in remaining]
            break
        if crashed:
            rows.append({**empty_row(remaining[0]), "error": f"{why}; its stderr ends: {tail}"})
            print(f"[bench] {spec_key(remaining[0])}: {why}", flush=True)
            remaining = remaining[1:]
        if killed:
            rows += [{**empty_row(s), "skipped": "time budget: no time left"} for s in remaining]
            break
        # else: the worker stopped after a failure that may have broken its CUDA context; a fresh one goes on
    return rows


# ---- the processes layouts ---------------------------------------------------------------------------
def mps_command(args: list[str], env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nvidia-cuda-mps-control", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=30)


def process_row(n: int, mps: bool, args, tmp: Path, deadline: float) -> dict:
    spec = {"layout": "processes", "members": n, "precision": "fp32", "mode": "mps" if mps else "no_mps"}
    row = empty_row(spec)
    row["note"] = "each process: main.py with torch's default precision (matmul fp32), evaluation included"
    estimate = 15.0 + n * args.process_steps / 400.0
    if time.time() + estimate > deadline:
        return {**row, "skipped": f"time budget: about {estimate:.0f} s needed, "
                                  f"{max(deadline - time.time(), 0):.0f} s left"}
    if mps and args.device != "cuda":
        return {**row, "skipped": "MPS needs CUDA"}
    if mps and shutil.which("nvidia-cuda-mps-control") is None:
        return {**row, "skipped": "MPS not available: nvidia-cuda-mps-control not found"}
    folder = Path(tempfile.mkdtemp(prefix=f"procs_{spec['mode']}_", dir=tmp))
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # 8 processes on a shared host's cores; main.py's CPU work is small
    row["omp_num_threads"] = env["OMP_NUM_THREADS"]
    mps_env = None
    if mps:
        mps_env = {**env, "CUDA_MPS_PIPE_DIRECTORY": str(folder / "mps_pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(folder / "mps_log")}
        for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            Path(mps_env[key]).mkdir()
        # the daemon forks off and may keep inherited pipes open: its output goes to a file, not a pipe
        with open(folder / "mps_start.log", "w") as log:
            try:
                started = subprocess.run(["nvidia-cuda-mps-control", "-d"], env=mps_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, timeout=30).returncode
            except (OSError, subprocess.SubprocessError) as exc:
                return {**row, "skipped": f"MPS not available: {exc}"}
        if started != 0:
            return {**row, "skipped": f"MPS not available: nvidia-cuda-mps-control -d exited {started}: "
                                      f"{(folder / 'mps_start.log').read_text().strip()[:500]}"}
        env = mps_env
    procs = []
    try:
        launch = time.time()
        for i in range(n):
            out = folder / f"run{i}"
            cmd = [sys.executable, "main.py", "--config", args.config, *shlex.split(args.task_flags),
                   "--seed", str(i), "--max_steps", str(args.process_steps), "--device", args.device,
                   "--progress", "false", "--out_dir", str(out)]
            log = open(folder / f"run{i}.log", "w")
            procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), out, log))
        ends, killed = [], False
        for proc, _, log in procs:
            try:
                proc.wait(timeout=max(deadline + GRACE_S - time.time(), 1))
            except subprocess.TimeoutExpired:
                killed = True
                for other, _, _ in procs:  # our own children, each by its handle
                    if other.poll() is None:
                        other.kill()
                proc.wait()
            ends.append(time.time())
            log.close()
        row["launch_to_exit_s"] = round(max(ends) - launch, 3)
        if mps:  # the servers' process ids: MPS did serve these runs
            try:
                row["mps_server_list"] = mps_command([], mps_env, stdin="get_server_list\n").stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                row["mps_server_list"] = f"failed: {exc}"
    finally:
        for proc, _, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        if mps:
            stop_mps(mps_env, row)
    summaries, failures = [], []
    for i, (proc, out, _) in enumerate(procs):
        path = out / "summary.json"
        if proc.returncode == 0 and path.is_file():
            summaries.append((json.loads(path.read_text()), path.stat().st_mtime))
        else:
            tail = (folder / f"run{i}.log").read_text()[-800:]
            failures.append(f"run {i} exited {proc.returncode}: {tail}")
    if killed:
        return {**row, "error": f"killed {GRACE_S} s past the time budget"}
    if failures:
        return {**row, "error": f"{len(failures)} of {n} processes failed; " + failures[0]}
    total = sum(s["steps"] for s, _ in summaries)
    walls = [s["wall_s"] for s, _ in summaries]
    span = max(end for _, end in summaries) - min(end - s["wall_s"] for s, end in summaries)
    row.update(steps=args.process_steps, wall_s=round(max(walls), 4), run_steps_per_s=total / max(walls),
               ms_per_step=1000.0 * max(walls) / args.process_steps,
               run_steps_per_s_span=total / span, run_steps_per_s_launch_to_exit=total / row["launch_to_exit_s"],
               train_step_ms=[s.get("train_step_ms") for s, _ in summaries])
    row["run_steps_per_s_with_eval"] = row["run_steps_per_s"]  # a run's wall time includes its evaluations
    row["ms_per_step_with_eval"] = row["ms_per_step"]
    peaks = [s.get("peak_gpu_mem_mb") for s, _ in summaries]
    if all(p is not None for p in peaks):  # each process's own allocations (not its CUDA context)
        row["peak_gpu_mem_mb"] = sum(peaks)
        row["peak_gpu_mem_mb_per_member"] = sum(peaks) / n
    return row


def stop_mps(env: dict, row: dict) -> None:
    try:
        quit_ = mps_command([], env, stdin="quit\n")
        row["mps_quit"] = quit_.returncode
    except (OSError, subprocess.SubprocessError) as exc:
        row["mps_quit"] = f"failed: {exc}"
        return
    # quit returns before the server is gone; wait a little so the next layout has the GPU to itself
    for _ in range(20):
        if subprocess.run(["pgrep", "-x", "nvidia-cuda-mps-server"], capture_output=True).returncode != 0:
            break
        time.sleep(0.5)


# ---- report ------------------------------------------------------------------------------------------
def comparison(rows: list[dict]) -> dict:
    """Best population layout vs solo and vs the processes, per precision; the issue's goals."""
    def value(r, key="run_steps_per_s"):
        return r.get(key) if not r.get("error") and not r.get("skipped") else None

    def best(precision, key="run_steps_per_s"):
        pool = [r for r in rows if r["layout"] == "population" and (precision is None or r["precision"] == precision)
                and value(r, key)]
        return max(pool, key=lambda r: r[key]) if pool else None

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    procs = {r["mode"]: value(r) for r in rows if r["layout"] == "processes"}
    out = {"per_precision": {}}
    for precision in [p for p in PRECISIONS if any(r["precision"] == p for r in rows)]:
        top, top_eval = best(precision), best(precision, "run_steps_per_s_with_eval")
        solo = next((value(r) for r in rows if r["layout"] == "solo" and r["precision"] == precision and value(r)),
                    None)
        solo_fp32 = next((value(r) for r in rows if r["layout"] == "solo" and r["precision"] == "fp32"
                          and value(r)), None)
        entry = {"best": None if top is None else {k: top[k] for k in ("members", "mode", "run_steps_per_s")},
                 "best_with_eval": None if top_eval is None else
                 {k: top_eval[k] for k in ("members", "mode", "run_steps_per_s_with_eval")},
                 "vs_solo": ratio(top and top["run_steps_per_s"], solo),
                 "vs_solo_fp32": ratio(top and top["run_steps_per_s"], solo_fp32)}
        for mode in ("no_mps", "mps"):
            entry[f"vs_processes_{mode}"] = ratio(top and top["run_steps_per_s"], procs.get(mode))
            entry[f"with_eval_vs_processes_{mode}"] = ratio(top_eval and top_eval["run_steps_per_s_with_eval"],
                                                            procs.get(mode))
        out["per_precision"][precision] = entry
    any_best, fp32_best = best(None), best("fp32")

    def goal(r, target):
        if r is None:
            return {"target": target, "best": None, "status": "not measured"}
        return {"target": target, "best": round(r["run_steps_per_s"]), "layout": spec_key(r),
                "status": "met" if r["run_steps_per_s"] >= target else "not met"}
    out["goal_any_precision"] = goal(any_best, GOAL_ANY)
    out["goal_strict_fp32"] = goal(fp32_best, GOAL_FP32)
    out["note"] = ("goals and ratios from run_steps_per_s (training updates, as the issue's probe); the with_eval "
                   "ratios compare like with like against the processes, whose runs include evaluation")
    return out


def fmt(value, spec=",.0f") -> str:
    return "-" if value is None else format(value, spec)


def times(value) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def print_report(record: dict) -> None:
    h = record["header"]
    print(f"\n{h['device_name']}; torch {h['torch']} (CUDA {h['cuda']}); commit {h['git_commit']}; {h['date']}")
    print(f"{h['steps']} timed steps per layout after the warm-up; task: {h['config']} {h['task_flags']}".rstrip())
    cols = f"{'layout':<10} {'M':>4} {'prec':<5} {'mode':<14} {'run-steps/s':>11} {'ms/step':>8} " \
           f"{'w/ eval':>9} {'peak MB':>9} {'MB/member':>9}  note"
    print(cols)
    for r in record["rows"]:
        note = r.get("error") or r.get("skipped") or r.get("with_eval_error") or ""
        print(f"{r['layout']:<10} {r['members']:>4} {r['precision']:<5} {r['mode']:<14} "
              f"{fmt(r['run_steps_per_s']):>11} {fmt(r['ms_per_step'], '.2f'):>8} "
              f"{fmt(r['run_steps_per_s_with_eval']):>9} {fmt(r['peak_gpu_mem_mb']):>9} "
              f"{fmt(r['peak_gpu_mem_mb_per_member'], ',.1f'):>9}  {note.splitlines()[0][:90] if note else ''}")
    c = record["comparison"]
    for precision, e in c["per_precision"].items():
        if e["best"] is None:
            print(f"{precision}: no population measured")
            continue
        b = e["best"]
        print(f"{precision}: best population M={b['members']} {b['mode']}: {b['run_steps_per_s']:,.0f} run-steps/s"
              f" = {times(e['vs_solo'])} solo ({precision}), {times(e['vs_processes_no_mps'])} / "
              f"{times(e['vs_processes_mps'])} the processes without / with MPS; with evaluation "
              f"{times(e['with_eval_vs_processes_no_mps'])} / {times(e['with_eval_vs_processes_mps'])}")
    for name, g in (("any precision", c["goal_any_precision"]), ("strict fp32", c["goal_strict_fp32"])):
        best = "" if g["best"] is None else f", best {g['best']:,} ({g['layout']})"
        print(f"goal >= {g['target']:,} run-steps/s, {name}: {g['status'].upper()}{best}")


# ---- main --------------------------------------------------------------------------------------------
def make_specs(args) -> tuple[list[dict], list[dict]]:
    """(specs measured before the processes layouts, specs after them: the compile modes)."""
    solo_mode = "graph" if args.device == "cuda" else "eager"
    first = [dict(layout="solo", members=1, precision=p, mode=solo_mode) for p in args.precisions]
    later = []
    for mode in args.modes:
        if not compiles(mode):
            first += [dict(layout="population", members=m, precision=p, mode=mode)
                      for p in args.precisions for m in args.sizes]
        else:  # each compiles for a while: the largest first, both precisions, in case time runs out
            later += [dict(layout="population", members=m, precision=p, mode=mode)
                      for m in sorted(args.compile_sizes, reverse=True) for p in args.precisions]
    return first, later


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"the JSON file (default {DEFAULT_OUT})")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where to train (default cuda)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 64, 128],
                        help="population sizes M (default 1 8 32 64 128)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "tf32"],
                        help="of fp32 (TF32 off), tf32, bf16 (default fp32 tf32)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="population modes (default on cuda: graph engine; on cpu: eager)")
    parser.add_argument("--compile_sizes", type=int, nargs="+", default=None,
                        help="population sizes of the compile modes, which compile once per layout "
                             "(default on cuda: 64 128; on cpu: --sizes)")
    parser.add_argument("--steps", type=int, default=300, help="timed updates per layout (default 300)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="updates before the timed ones (default: the config's lr warm-up plus two epochs, "
                             "30 for mod-97: every CUDA graph captured and compiled before timing)")
    parser.add_argument("--no_eval", action="store_true",
                        help="skip the second timed loop with evaluations (run_steps_per_s_with_eval)")
    parser.add_argument("--processes", type=int, default=8, help="separate main.py processes at once (default 8)")
    parser.add_argument("--process_steps", type=int, default=1000,
                        help="training steps of each of those processes (default 1000)")
    parser.add_argument("--no_processes", action="store_true", help="skip the processes layouts")
    parser.add_argument("--no_mps", action="store_true", help="skip the processes layout under CUDA MPS")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the task's config (default {DEFAULT_CONFIG})")
    parser.add_argument("--task_flags", default="",
                        help="more main.py flags for every layout, one string: --task_flags=\"--p 11 --dim 32\" "
                             "(default none: the config's task, p 97, dim 128, 2 layers, batch 512)")
    parser.add_argument("--time_budget_s", type=float, default=260.0,
                        help="the whole benchmark's wall time: a layout that would end past it is skipped "
                             f"(and recorded so); a running one is killed {GRACE_S} s past it (default 260)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    for name in ("steps", "processes", "process_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.time_budget_s < 0:
        parser.error("--time_budget_s must be >= 0")
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup must be >= 1 (one eager update creates the state the CUDA graphs need)")
    if any(m < 1 for m in args.sizes + (args.compile_sizes or [])):
        parser.error("population sizes must be >= 1")
    if args.modes is None:
        args.modes = ["graph", "engine"] if args.device == "cuda" else ["eager"]
    if args.device == "cpu" and any("graph" in m for m in args.modes):
        parser.error("CUDA graphs need --device cuda (on cpu use --modes eager and/or compile)")
    if args.compile_sizes is None:
        args.compile_sizes = [64, 128] if args.device == "cuda" else list(args.sizes)
    config = next((c for c in (Path(args.config), REPO / args.config) if c.is_file()), None)
    if config is None:
        parser.error(f"--config {args.config}: no such file")
    args.config = str(config.resolve())  # the workers and main.py processes run in the repository
    from repro.errors import UserError
    try:
        base_config({"config": args.config, "task_flags": shlex.split(args.task_flags), "device": args.device})
    except (ValueError, UserError) as exc:
        parser.error(f"--config / --task_flags: {exc}")
    return args


def shown_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(REPO.resolve()))
    except ValueError:
        return path


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return worker(args.worker)
    begin = time.time()
    deadline = begin + args.time_budget_s
    header = {"device": args.device, "device_name": None, "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "git_commit": git_commit(),
              "command": shlex.join(["scripts/bench_population.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": shown_path(args.config),
              "task_flags": args.task_flags, "steps": args.steps,
              "warmup": args.warmup if args.warmup is not None else "auto",
              "time_budget_s": args.time_budget_s, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if args.device == "cuda" and shutil.which("pgrep"):
        header["mps_daemon_running_before"] = subprocess.run(["pgrep", "-x", "nvidia-cuda-mps-control"],
                                                             capture_output=True).returncode == 0
    job = {"device": args.device, "config": args.config, "task_flags": shlex.split(args.task_flags),
           "steps": args.steps, "warmup": args.warmup, "with_eval": not args.no_eval}
    first, later = make_specs(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_population_") as tmp:
        tmp = Path(tmp)
        rows += run_workers(first, job, tmp, deadline, header)
        if not args.no_processes:
            for mps in ([False] if args.no_mps else [False, True]):
                print(f"[bench] processes:{args.processes}:fp32:{'mps' if mps else 'no_mps'} ...", flush=True)
                try:
                    row = process_row(args.processes, mps, args, tmp, deadline)
                except Exception as exc:  # a row says what went wrong; the other layouts still run
                    row = {**empty_row(dict(layout="processes", members=args.processes, precision="fp32",
                                            mode="mps" if mps else "no_mps")), "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                note = row.get("error") or row.get("skipped") or f"{row['run_steps_per_s']:,.0f} run-steps/s"
                print(f"[bench] {spec_key(row)}: {note.splitlines()[0][:200]}", flush=True)
        rows += run_workers(later, job, tmp, deadline, header)
    if header["device_name"] is None and args.device == "cuda" and shutil.which("nvidia-smi"):  # no worker ran
        query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True)
        if query.returncode == 0 and query.stdout.strip():
            header["device_name"] = query.stdout.strip().splitlines()[0]
    if header["device_name"] is None and args.device == "cpu":
        header["device_name"] = cpu_name()
    header["elapsed_s"] = round(time.time() - begin, 1)
    record = {"benchmark": "population", "header": header, "rows": rows, "comparison": comparison(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print_report(record)
    print(f"\nwrote {args.out} ({header['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
