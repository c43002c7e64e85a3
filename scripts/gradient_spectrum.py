#!/usr/bin/env python3
"""What the Grokfast filter does to the gradient (issue 21 Q7): power spectra of gradient sequences.

    python scripts/gradient_spectrum.py --steps 3000 --window 2048 --out results/beyond/gradient_spectrum

Trains mod-97 multiplication twice with the suite's own code (repro.tasks.modular's task and model,
repro.step's optimizer and filter, i.e. grokfast.GradFilter):
    baseline:  no filter, Adam, weight decay 0.005 (the tables' control row);
    grokfast:  Grokfast-EMA, alpha 0.98, lambda 2, weight decay 0.005.
For 8 fixed scalar entries (4 of the token embedding, 4 of the first MLP weight) it records, over the last
`--window` steps, the raw gradient g_t and the filtered one g_hat_t = g_t + lambda*EMA_alpha(g)_t. In the
Grokfast run g_hat is what the optimizer got; in the baseline a shadow GradFilter (same alpha, lambda) runs on
a copy of the gradients, so g_hat is what the filter *would* make of the baseline's gradients, without
changing its training.

Spectra: Welch's method (Hann segments of --segment steps, half overlap, no detrending, so the slowest
band keeps its mean), one-sided, frequency in cycles per step (0 .. 0.5). Each entry's spectra are divided
by that entry's raw total power, then averaged over the entries, so the curves share a scale and the
filtered/raw ratio is the filter's gain. The EMA's cut-off: omega_c = 1 - alpha rad/step, i.e.
f_c = (1 - alpha)/(2*pi) cycles per step (~0.0032 for alpha 0.98); the slow band f < f_c is shaded. The
third panel is the measured gain against the filter's exact transfer |1 + lambda*(1-alpha)/(1 - alpha e^{-2 pi i f})|^2.

Writes spectrum.png and spectrum.json (frequencies, the averaged spectra, per-entry band powers, the
runs' final accuracies and the command) into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from grokfast import GradFilter  # noqa: E402
from repro.config import load_config  # noqa: E402
from repro.step import make_filter, make_optimizer  # noqa: E402
from repro.tasks.modular import ModularConfig, ModularTask  # noqa: E402

ENTRIES_PER_PARAM = 4
PARAMS = ("token_embeddings.weight", "layers.0.mlp.0.weight")


def tracked_entries(model: torch.nn.Module) -> list[tuple[str, tuple]]:
    """Fixed scalar entries, spread over each tracked parameter (deterministic, independent of the seed)."""
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    out = []
    for name in PARAMS:
        numel = math.prod(shapes[name])
        for k in range(ENTRIES_PER_PARAM):
            flat = (k * 2 + 1) * numel // (2 * ENTRIES_PER_PARAM)
            out.append((name, tuple(int(i) for i in np.unravel_index(flat, shapes[name]))))
    return out


def train(cfg: ModularConfig, steps: int, window: int, shadow: bool) -> dict:
    """Train `steps` steps; record raw and filtered gradients of the tracked entries over the last `window`."""
    device = torch.device("cpu")
    task = ModularTask(cfg, device)
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, device)
    filt = make_filter(cfg, model)
    if shadow:  # the baseline: what the filter would make of its gradients, training untouched
        copies = {n: torch.nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
        ghost = GradFilter(list(copies.values()), "ema", alpha=cfg.alpha, lamb=cfg.lamb)
    entries = tracked_entries(model)
    named = dict(model.named_parameters())
    raw = np.zeros((len(entries), window))
    filtered = np.zeros((len(entries), window))
    start = steps - window
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        task.loss(task.train_batch(step)).backward()
        rec = step - start
        if rec >= 0:
            raw[:, rec] = [named[n].grad[idx].item() for n, idx in entries]
        if shadow:
            for n, c in copies.items():
                c.grad = named[n].grad.detach().clone()
            ghost.step()
            if rec >= 0:
                filtered[:, rec] = [copies[n].grad[idx].item() for n, idx in entries]
        else:
            filt.step()
            if rec >= 0:
                filtered[:, rec] = [named[n].grad[idx].item() for n, idx in entries]
        optimizer.step()
    metrics = {k: float(v) for k, v in task.evaluate(steps).items()}
    return {"raw": raw, "filtered": filtered, "entries": entries, "final": metrics}


def welch(x: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Welch power spectra of the rows of x (Hann, half overlap, no detrending)."""
    n = x.shape[-1]
    segment = min(segment, n)
    hop = max(segment // 2, 1)
    win = np.hanning(segment)
    starts = range(0, n - segment + 1, hop)
    spectra = [np.abs(np.fft.rfft(x[..., s:s + segment] * win, axis=-1)) ** 2 for s in starts]
    power = np.mean(spectra, axis=0) / (win ** 2).sum()
    power[..., 1:] *= 2  # one-sided
    if segment % 2 == 0:
        power[..., -1] /= 2
    return np.fft.rfftfreq(segment), power


def ema_gain(freq: np.ndarray, alpha: float, lamb: float) -> np.ndarray:
    z = np.exp(-2j * np.pi * freq)
    return np.abs(1 + lamb * (1 - alpha) / (1 - alpha * z)) ** 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="training steps per run")
    ap.add_argument("--window", type=int, default=2048, help="record the last this many steps")
    ap.add_argument("--segment", type=int, default=1024, help="Welch segment length, steps")
    ap.add_argument("--p", type=int, default=97)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--num_layers", type=int, default=2)
    ap.add_argument("--num_heads", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.98)
    ap.add_argument("--lamb", type=float, default=2.0)
    ap.add_argument("--weight_decay", type=float, default=0.005)
    ap.add_argument("--out", type=Path, default=Path("results/beyond/gradient_spectrum"))
    args = ap.parse_args(argv)
    if not 1 <= args.window <= args.steps:
        ap.error("--window must be in [1, --steps]")
    common = ["--p", str(args.p), "--dim", str(args.dim), "--num_layers", str(args.num_layers),
              "--num_heads", str(args.num_heads), "--batch_size", str(args.batch_size), "--seed", str(args.seed),
              "--alpha", str(args.alpha), "--lamb", str(args.lamb), "--weight_decay", str(args.weight_decay),
              "--device", "cpu"]
    runs = {}
    for label, filt in (("baseline", "none"), ("grokfast", "ema")):
        cfg = load_config(ModularConfig, [*common, "--filter", filt])
        t0 = time.time()
        runs[label] = train(cfg, args.steps, args.window, shadow=filt == "none")
        runs[label]["seconds"] = time.time() - t0
        print(f"{label}: {args.steps} steps in {runs[label]['seconds']:.0f} s, final {runs[label]['final']}",
              flush=True)

    f_c = (1 - args.alpha) / (2 * math.pi)
    out = {"command": "python scripts/gradient_spectrum.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "alpha": args.alpha, "lamb": args.lamb, "cutoff_cycles_per_step": f_c,
           "window_steps": [args.steps - args.window, args.steps], "runs": {}}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, label in zip(axes[:2], ("baseline", "grokfast")):
        r = runs[label]
        freq, p_raw = welch(r["raw"], args.segment)
        _, p_filt = welch(r["filtered"], args.segment)
        total = p_raw.sum(axis=1, keepdims=True) + 1e-300
        raw_n, filt_n = (p_raw / total).mean(0), (p_filt / total).mean(0)
        slow = freq < f_c
        band = {"raw_slow_fraction": [float(x) for x in (p_raw[:, slow].sum(1) / total[:, 0])],
                "filtered_over_raw_power": [float(x) for x in (p_filt.sum(1) / total[:, 0])]}
        out["runs"][label] = {"frequency": freq.tolist(), "raw": raw_n.tolist(), "filtered": filt_n.tolist(),
                              "entries": [[n, list(i)] for n, i in r["entries"]], "final": r["final"],
                              "seconds": r["seconds"], **band}
        ax.loglog(freq[1:], raw_n[1:], label="raw g", color="C0")
        ax.loglog(freq[1:], filt_n[1:], label="filtered g + λ·EMA(g)" + (" (shadow)" if label == "baseline" else ""),
                  color="C3", alpha=0.8)
        ax.axvspan(freq[1], f_c, color="0.85", zorder=0, label=f"slow band f < (1-α)/2π = {f_c:.4f}")
        ax.axvline(f_c, color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("frequency (cycles per step)")
        ax.set_ylabel("power / raw total power (mean of 8 entries)")
        title = "baseline (no filter, wd 0.005)" if label == "baseline" else f"Grokfast-EMA (α {args.alpha}, λ {args.lamb})"
        ax.set_title(f"{title}\nfinal val acc {r['final']['val_acc']:.2f}", fontsize=10)
        ax.legend(fontsize=8)
        axes[2].loglog(freq[1:], (filt_n / np.maximum(raw_n, 1e-300))[1:], label=f"measured, {label}", alpha=0.8)
    axes[2].loglog(freq[1:], ema_gain(freq[1:], args.alpha, args.lamb), "k--", label="|1 + λ H_EMA(f)|², exact")
    axes[2].axvspan(freq[1], f_c, color="0.85", zorder=0)
    axes[2].set_xlabel("frequency (cycles per step)")
    axes[2].set_ylabel("filtered / raw power")
    axes[2].set_title("the filter's gain", fontsize=10)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Gradient power spectra, mod-{args.p} multiplication, steps {args.steps - args.window}-{args.steps} "
                 f"(Welch, segments of {min(args.segment, args.window)})", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "spectrum.png", dpi=120)
    (args.out / "spectrum.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out / 'spectrum.png'} and {args.out / 'spectrum.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
