#!/usr/bin/env python3
"""Are two settings' steps to a threshold distributed alike? One swept key's values compared over seeds.

    python scripts/compare_sweep.py runs/sweeps/tf32_seeds --by tf32      # strict float32 vs TF32

For each combination of the sweep's other swept settings (a row of the output), each value of --by: how
many finished members reached the threshold, and the median, mean, standard deviation and range of their
steps to it. With two values, a rank test of whether one tends to need more steps than the other: the
members are ranked by steps (one that never reached the threshold ranks above every one that did, ties
sharing their mean rank), and the two-sided p-value is the share of 20,000 random relabellings (seed 0)
whose difference in mean rank is at least the observed one (a permutation Mann-Whitney test). Writes the
table to <sweep>/compare_<by>.md and prints it.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from plot_sweep import load, show  # noqa: E402
from repro.errors import UserError  # noqa: E402

PERMUTATIONS = 20_000


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their mean rank (inf ranks above every finite value)."""
    order = np.argsort(values, kind="stable")
    sorted_values, r = values[order], np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def rank_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Two-sided permutation p-value of the difference in mean rank between samples a and b (inf: not reached)."""
    r = ranks(np.concatenate([a, b]))
    observed = abs(r[:len(a)].mean() - r[len(a):].mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(PERMUTATIONS):
        p = rng.permutation(r)
        hits += abs(p[:len(a)].mean() - p[len(a):].mean()) >= observed - 1e-12
    return hits / PERMUTATIONS


def describe(steps: pd.Series) -> dict:
    reached = steps.dropna()
    out = {"reached": f"{len(reached)}/{len(steps)}"}
    if len(reached):
        out.update({"median": f"{reached.median():,.0f}", "mean": f"{reached.mean():,.0f}",
                    "sd": f"{reached.std(ddof=1):,.0f}" if len(reached) > 1 else "",
                    "range": f"{reached.min():,.0f}-{reached.max():,.0f}"})
    return out


def compare(sweep_dir: Path, by: str, threshold: float) -> str:
    spec, table = load(sweep_dir, threshold)
    swept = list(spec["swept"])
    if by not in swept:
        raise UserError(f"--by {by!r} is not a swept setting of {sweep_dir.name} (swept: {', '.join(swept) or 'none'})")
    others = [k for k in swept if k != by]
    values = sorted(table[by].unique(), key=str)
    pct = round(threshold * 100)
    head = [*others, by, "members reaching", f"median steps to {pct}%", "mean", "sd", "range"]
    lines = [f"Steps to {pct}% validation accuracy in {sweep_dir.name} by {by} (finished members; "
             f"{len(table)} of them).", "", "| " + " | ".join(head) + (" | p (rank test) |" if len(values) == 2 else " |"),
             "|" + "---|" * (len(head) + (len(values) == 2))]
    groups = table.groupby(others, sort=True) if others else [((), table)]
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        samples = {v: rows.loc[rows[by] == v, "reached_at"] for v in values}
        p = ""
        if len(values) == 2 and all(len(s) for s in samples.values()):
            a, b = (np.nan_to_num(samples[v].to_numpy(float), nan=math.inf) for v in values)
            p = f"{rank_test(a, b):.2f}"
        for i, v in enumerate(values):
            d = describe(samples[v])
            cells = [*(show(k) for k in key), show(v), d["reached"], d.get("median", "never"), d.get("mean", ""),
                     d.get("sd", ""), d.get("range", "")]
            lines.append("| " + " | ".join(cells) + (f" | {p if i == 0 else ''} |" if len(values) == 2 else " |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--by", required=True, help="the swept setting whose values are compared, e.g. tf32")
    parser.add_argument("--threshold", type=float, default=0.95, help="validation accuracy (default 0.95)")
    args = parser.parse_args(argv)
    try:
        text = compare(args.sweep_dir, args.by, args.threshold)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (args.sweep_dir / f"compare_{args.by}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
