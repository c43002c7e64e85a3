"""Turn the run folders under results/ into the paper's tables and figures (results/README.md).

Every number comes from a run folder (summary.json, metrics.jsonl); the paper's figures come from
scripts/tables.yaml and sit in their own column. Runs are grouped by task and --label.

    python scripts/summarize.py                       # results/ -> results/README.md + results/figures/
    python scripts/summarize.py --thresholds 0.85 0.9 0.95 --results results --out results/README.md
"""
import argparse
import json
import os
import math
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repro.metrics import first_step_reaching, read_jsonl  # noqa: E402
from repro.plots import plot_groups  # noqa: E402

TABLES_SPEC = Path(__file__).with_name("tables.yaml")


def relpath(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def load_runs(results: Path) -> list[dict]:
    """One dict per finished run folder: its summary, config, records and path."""
    runs = []
    for summary_path in sorted(results.glob("*/*/summary.json")):
        folder = summary_path.parent
        config_path = folder / "config.yaml"
        if not config_path.exists():
            continue
        runs.append({"dir": folder, "summary": json.loads(summary_path.read_text()),
                     "config": yaml.safe_load(config_path.read_text()),
                     "records": read_jsonl(folder / "metrics.jsonl")})
    return runs


def steps_to(run: dict, threshold: float) -> tuple[float, bool]:
    """(first step with val_acc >= threshold, reached?); not reached gives the steps run."""
    hit = first_step_reaching(run["records"], "val_acc", threshold)
    return (hit["step"], True) if hit else (run["summary"]["steps"], False)


def time_to(run: dict, threshold: float) -> tuple[float, bool]:
    hit = first_step_reaching(run["records"], "val_acc", threshold)
    return (hit["elapsed_s"], True) if hit else (run["summary"]["wall_s"], False)


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return f"{x:.3g}"


def aggregate(values: list[tuple[float, bool]]) -> dict:
    """mean ± std over seeds; a value not reached counts as its budget, and the mean is then a bound."""
    xs = [v for v, _ in values]
    all_reached = all(ok for _, ok in values)
    return {"mean": statistics.mean(xs) if xs else None,
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs), "reached": sum(ok for _, ok in values), "all_reached": all_reached,
            "per_seed": values}


def cell(agg: dict) -> str:
    if not agg["n"]:
        return "no runs"
    bound = "" if agg["all_reached"] else "> "
    text = f"{bound}{fmt(agg['mean'])} ± {fmt(agg['std'])} (n={agg['n']})"
    if not agg["all_reached"]:
        text += f", {agg['reached']}/{agg['n']} reached"
    seeds = ", ".join(("" if ok else ">") + fmt(v) for v, ok in agg["per_seed"])
    return f"{text}<br><sub>{seeds}</sub>"


def metric_columns(kind: str, thresholds: list[float]) -> list[tuple[str, str, callable]]:
    """(column title, paper key, run -> (value, reached))."""
    def summary_key(key):
        return lambda run: (run["summary"].get(key), run["summary"].get(key) is not None)

    common = [("peak GPU MB", "peak_gpu_mem_mb", summary_key("peak_gpu_mem_mb")),
              ("ms / iteration (wall)", "wall_per_step_ms", summary_key("wall_per_step_ms")),
              ("ms / train step", "train_step_ms", summary_key("train_step_ms"))]
    if kind == "accuracy":
        cols = [(f"steps to {t:.0%}", "steps_to_95" if round(t * 100) == 95 else "",
                 (lambda t: lambda run: steps_to(run, t))(t)) for t in thresholds]
        cols.append(("wall s to 95%", "time_to_95_s", lambda run: time_to(run, 0.95)))
        cols.append(("best val acc", "", summary_key("best_val_acc")))
        return cols + common
    if kind == "imdb":
        return [("best val acc, 50-batch (paper's)", "best_val_batch_acc", summary_key("best_val_batch_acc")),
                ("min val loss, 50-batch (paper's)", "min_val_batch_loss", summary_key("min_val_batch_loss")),
                ("best val acc, full split", "", summary_key("best_val_acc")),
                ("min val loss, full split", "", summary_key("min_val_loss")),
                # best and min hide a run that ends worse than it was (wd 10 runs collapse to chance)
                ("final val acc, full split", "", summary_key("final_val_acc"))] + common
    return [("min val MSE", "min_val_loss", summary_key("min_val_loss"))] + common


def speedup(base: list[dict], fast: list[dict], threshold: float = 0.95) -> str:
    b = aggregate([steps_to(r, threshold) for r in base])
    f = aggregate([steps_to(r, threshold) for r in fast])
    what = f"speed-up to {threshold:.0%}"
    if not b["n"] or not f["n"] or not f["all_reached"]:
        return f"{what}: not measurable (Grokfast runs missing or not all reaching {threshold:.0%})"
    bound = "" if b["all_reached"] else "at least "
    return f"{what} (baseline mean / Grokfast mean): {bound}×{b['mean'] / f['mean']:.2f}"


def finished(run: dict) -> bool:
    """Ran its whole budget or stopped early by the early-stop rule (not interrupted)."""
    stopped = run["summary"].get("stopped", "budget")
    return stopped == "budget" or stopped.startswith("early_stop")


def row_name(spec: dict, run: dict) -> str:
    return spec["rows"][run["config"]["label"]]["name"]


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) spans: sittings that ran side by side count once."""
    total, last = 0.0, -math.inf
    for a, b in sorted(spans):
        total += max(0.0, b - max(a, last))
        last = max(last, b)
    return total


def sittings_markdown(results: Path, runs: list[dict]) -> str:
    """What the GPU sittings (scripts/run_on_gpu.sh records) cost, per device, and which runs they made."""
    files = sorted((results / "sittings").glob("*.json"))
    if not files:
        return ""
    spans, jobs = {}, 0  # device -> [(start, end)]
    for f in files:
        rec = json.loads(f.read_text())
        start = datetime.strptime(f.name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        spans.setdefault(rec["device"], []).append((start, start + rec["wall_s"]))
        jobs = max(jobs, rec["jobs"])
    # a sitting lists every run it was given, failed and finished ones too: count runs and resumes from the
    # run folders, matched to sittings by the device their headers name
    made = [(json.loads((r["dir"] / "header.json").read_text()), r) for r in runs
            if (r["dir"] / "header.json").exists()]
    parts = []
    for device, device_spans in sorted(spans.items()):
        mine = [(h, r) for h, r in made if h.get("device") == device]
        resumes = sum(len(h.get("resumed", [])) for h, _ in mine)
        tasks = ", ".join(sorted({r["summary"].get("task", "?") for _, r in mine}))
        n, minutes = len(device_spans), union_seconds(device_spans) / 60
        parts.append(f"on {device}, {n} sitting{'s' if n != 1 else ''}, {minutes:.1f} minutes of GPU wall time, "
                     f"which made {len(mine)} of the runs below ({resumes} of them resumed after a sitting's "
                     f"deadline{'; ' + tasks if tasks else ''})")
    return (f"**GPU time.** Sittings (`results/sittings/`, made by `scripts/run_on_gpu.sh`, up to {jobs} runs at "
            "once under CUDA MPS): " + "; ".join(parts) + ". "
            "The runs shared the GPU, so their per-step latencies and wall times to a threshold are those of a "
            "crowded GPU, not of a run alone: `results/bench/` has each task alone on an H100 "
            "(`probe_h100.txt`; mod-97: the run folders in `solo_h100_modular/`).\n")


def table_markdown(table_id: str, spec: dict, runs: list[dict], thresholds: list[float],
                   out_dir: Path, figures: Path) -> str:
    task_runs = [r for r in runs if r["summary"].get("task") == spec["task"]]
    by_label = {label: [r for r in task_runs if r["config"].get("label") == label] for label in spec["rows"]}
    columns = metric_columns(spec["kind"], thresholds)
    lines = [f"### {spec['title']}", ""]
    header = ["row"] + [c[0] for c in columns] + ["runs"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in spec["rows"].items():
        rruns = sorted(by_label[label], key=lambda r: r["summary"]["seed"])
        cells = [f"**{row['name']}**"]
        for _, paper_key, getter in columns:
            values = [getter(r) for r in rruns if getter(r)[0] is not None]
            text = cell(aggregate(values)) if values else "–"
            paper = row.get("paper", {}).get(paper_key) if paper_key else None
            if paper is not None:
                text += f"<br>paper: {fmt(paper)}"
            cells.append(text)
        links = ", ".join(f"[s{r['summary']['seed']}]({relpath(r['dir'], out_dir)})" for r in rruns)
        cells.append(links or "none")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    cut = [f"{row_name(spec, r)} s{r['summary']['seed']} ({r['summary']['stopped']})"
           for label in spec["rows"] for r in by_label[label] if not finished(r)]
    if cut:
        lines += ["Stopped before their budget (shown with `>`; a sitting's deadline, not the paper's budget): "
                  + "; ".join(cut) + ".", ""]
    if spec["kind"] == "accuracy":
        lines += ["; ".join(speedup(by_label[spec["baseline"]], by_label[spec["grokfast"]], t)
                            for t in thresholds) + ".", ""]
    groups = {spec["rows"][label]["name"]: [r["dir"] for r in by_label[label]]
              for label in spec["rows"] if by_label[label]}
    if groups:
        keys = ("acc", "loss") if spec["kind"] != "regression" else ("loss",)
        figure = plot_groups(groups, figures / f"{table_id}.png", title=spec["title"], stems=keys)
        lines += [f"![{table_id}]({relpath(figure, out_dir)})", ""]
    if spec.get("note"):
        lines += [spec["note"].strip(), ""]
    return "\n".join(lines)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def inject(readme: Path, body: str, tables_dir: Path) -> None:
    """Replace what lies between the README's results markers; links are re-based to the README's folder."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    prefix = relpath(tables_dir, readme.parent)
    body = body.replace("](", f"]({prefix}/") if prefix != "." else body
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + body.strip() + "\n" + END + rest.split(END, 1)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder of <task>/<run>/ folders")
    parser.add_argument("--out", type=Path, default=None, help="markdown to write (default <results>/README.md)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.90, 0.95])
    parser.add_argument("--readme", type=Path, default=None,
                        help="also copy the tables into this file between its results markers (README.md)")
    parser.add_argument("--tables", nargs="*", help="table ids to include (default: all in tables.yaml)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no results folder: {args.results}")
    if any(not 0 < t <= 1 for t in args.thresholds):
        parser.error("thresholds are fractions in (0, 1]")
    out = args.out or args.results / "README.md"
    specs = yaml.safe_load(TABLES_SPEC.read_text())
    runs = load_runs(args.results)
    body = ["Generated by `python scripts/summarize.py` from the run folders below; do not edit by hand. "
             "Each cell: mean ± std over seeds (n), per-seed values underneath; `>` marks a run that never "
             "reached the threshold within its steps (its step count is used, so the mean is a lower "
             "bound). The paper's figure (one seed, GTX 1080 Ti) is under ours.", "",
            sittings_markdown(args.results, runs)]
    body += [table_markdown(table_id, spec, runs, args.thresholds, out.parent, out.parent / "figures")
             for table_id, spec in specs.items() if not args.tables or table_id in args.tables]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(["# Results", "", *body]))
    if args.readme:
        inject(args.readme, "\n".join(body), out.parent)
    print(f"wrote {out} from {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
