"""Optimizer-step time (filter + Adam step, gradients already present) for a model the size of the
mod-97 transformer (~423k parameters in 30 tensors), with each filter implementation.

Each timed step starts from fresh gradient tensors (as backward with set_to_none makes them; not timed)
and times filter + Adam.step(); the table gives the median over --repeats steps after a warm-up that
fills the MA window. On CUDA a step is timed on the host clock between two synchronisations, so it
includes the kernel-launch overhead that dominates a model this small.

    python scripts/bench_filter.py                    # CPU, and CUDA too if available
    python scripts/bench_filter.py --device cuda --repeats 500 --json bench.json
"""
import argparse
import json
import platform
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grokfast  # noqa: E402
from repro.metrics import git_commit  # noqa: E402

DIM, VOCAB, SEQ, LAYERS = 128, 99, 5, 2
SHAPES = [(VOCAB, DIM), (SEQ, DIM)]
for _ in range(LAYERS):
    SHAPES += [(DIM,), (DIM,), (3 * DIM, DIM), (3 * DIM,), (DIM, DIM), (DIM,),  # ln_1, attention
               (DIM,), (DIM,), (4 * DIM, DIM), (4 * DIM,), (DIM, 4 * DIM), (DIM,)]  # ln_2, MLP
SHAPES += [(DIM,), (DIM,), (VOCAB, DIM), (VOCAB,)]  # final LayerNorm, head

ALPHA, LAMB_EMA, WINDOW, LAMB_MA = 0.98, 2.0, 100, 5.0


def plain_ema(named, state):
    """The paper's EMA written as the reference does: a dict update and a new gradient tensor."""
    for n, p in named:
        if n not in state:
            state[n] = p.grad.detach()
        state[n] = state[n] * ALPHA + p.grad.detach() * (1 - ALPHA)
        p.grad = p.grad + state[n] * LAMB_EMA


def plain_ma(named, state):
    """The paper's MA written naively: a deque per parameter, re-summed in full every step."""
    for n, p in named:
        window = state.setdefault(n, deque(maxlen=WINDOW))
        window.append(p.grad.detach())
        if len(window) == WINDOW:
            p.grad = p.grad + sum(window) / len(window) * LAMB_MA


def rows(module):
    """(name, factory) pairs; a factory returns the per-step filter callable (or None)."""
    named = list(module.named_parameters())

    def grad_filter(kind, foreach, **kw):
        return lambda: grokfast.GradFilter(module, kind, foreach=foreach, **kw).step

    def stateful(fn, **kw):
        def factory():
            box = {"state": None}

            def call():
                box["state"] = fn(module, box["state"], **kw)
            return call
        return factory

    def plain(fn):
        def factory():
            state = {}
            return lambda: fn(named, state)
        return factory

    return [
        ("no filter (Adam step only)", lambda: None),
        ("GradFilter EMA, foreach", grad_filter("ema", True, alpha=ALPHA, lamb=LAMB_EMA)),
        ("GradFilter EMA, loop", grad_filter("ema", False, alpha=ALPHA, lamb=LAMB_EMA)),
        (f"GradFilter MA w={WINDOW}, foreach", grad_filter("ma", True, window_size=WINDOW, lamb=LAMB_MA)),
        (f"GradFilter MA w={WINDOW}, loop", grad_filter("ma", False, window_size=WINDOW, lamb=LAMB_MA)),
        ("gradfilter_ema (functional)", stateful(grokfast.gradfilter_ema, alpha=ALPHA, lamb=LAMB_EMA)),
        (f"gradfilter_ma w={WINDOW} (functional)", stateful(grokfast.gradfilter_ma, window_size=WINDOW, lamb=LAMB_MA)),
        ("plain EMA (reference-style dict)", plain(plain_ema)),
        (f"plain MA w={WINDOW} (deque, full re-sum)", plain(plain_ma)),
    ]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {torch.get_num_threads()} thread(s)"
    except OSError:
        pass
    return (platform.processor() or platform.machine()) + f", {torch.get_num_threads()} thread(s)"


def bench(device: torch.device, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    module = nn.Module()
    module.params = nn.ParameterList(
        nn.Parameter((0.02 * torch.randn(s, generator=gen)).to(device)) for s in SHAPES)
    params = list(module.parameters())
    grads = [(1e-3 * torch.randn(s, generator=gen)).to(device) for s in SHAPES]
    warmup = WINDOW + 10  # fill the MA windows, so every timed step applies the filter
    names, steps = [], []
    for name, factory in rows(module):  # each row: its own Adam and filter state over the shared params
        names.append(name)
        steps.append((factory(), torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98))))
    cuda = device.type == "cuda"
    times = [[] for _ in names]
    for i in range(warmup + repeats):
        for row, (step_filter, opt) in enumerate(steps):  # rows interleaved: all see the same machine load
            for p, g in zip(params, grads):
                p.grad = g.clone()
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            if step_filter is not None:
                step_filter()
            opt.step()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[row].append(time.perf_counter() - t0)
    results = [{"name": n, "ms": statistics.median(t) * 1e3} for n, t in zip(names, times)]
    base = results[0]["ms"]
    for r in results:
        r["ratio"] = r["ms"] / base
    by_name = {r["name"]: r["ms"] for r in results}
    naive = by_name[f"plain MA w={WINDOW} (deque, full re-sum)"]
    speedup = {kind: naive / by_name[f"GradFilter MA w={WINDOW}, {kind}"] for kind in ("foreach", "loop")}
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "repeats": repeats, "warmup": warmup, "n_params": sum(p.numel() for p in params),
            "n_tensors": len(SHAPES), "rows": results, "ma_speedup_vs_plain_resum": speedup}


def print_table(res: dict) -> None:
    print(f"\n{res['device']}: {res['device_name']}; torch {torch.__version__}; {res['n_params']:,} parameters in "
          f"{res['n_tensors']} tensors; median of {res['repeats']} steps after {res['warmup']} warm-up steps")
    width = max(len(r["name"]) for r in res["rows"])
    print(f"{'filter + Adam step':<{width}}  {'ms/step':>9}  {'x no-filter':>11}")
    for r in res["rows"]:
        print(f"{r['name']:<{width}}  {r['ms']:>9.3f}  {r['ratio']:>11.2f}")
    s = res["ma_speedup_vs_plain_resum"]
    print(f"MA speed-up vs the plain re-sum: {s['foreach']:.1f}x (GradFilter foreach), {s['loop']:.1f}x (loop)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                        help="auto (default): CPU, and CUDA too if available")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per row (default: 40 on CPU, 300 on CUDA)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: stable on shared machines, where 2+ OpenMP threads "
                             "under load can slow every op 100x; 0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"cpu": ["cpu"], "cuda": ["cuda"],
               "auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}[args.device]
    results = []
    for d in devices:
        repeats = args.repeats or (300 if d == "cuda" else 40)
        results.append(bench(torch.device(d), repeats))
        print_table(results[-1])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"torch": torch.__version__, "git_commit": git_commit(), "results": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
