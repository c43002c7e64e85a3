"""Turn run folders into the paper's tables and figures: <results>/README.md and <results>/figures/.

Every number comes from a run folder (summary.json, metrics.jsonl, config.yaml, header.json); the
paper's figures and the table layout come from configs/tables.yaml. Runs are placed in a table's row by
their task and --label; runs that fit no table are listed, tables without runs left out. A table's notes
describe the committed runs, so they are shown only when the table's runs are those (see tables.yaml).

    python scripts/summarize.py                        # runs/ (the reproduce scripts' default folder)
    python scripts/summarize.py --results results      # the committed runs -> results/README.md
    python scripts/summarize.py --tables               # the table ids
    python scripts/summarize.py --results results --tables qm9 --out /tmp/qm9.md
"""
import argparse
import json
import math
import os
import statistics
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from repro.metrics import first_step_reaching, read_jsonl  # noqa: E402

TABLES_SPEC = REPO / "configs" / "tables.yaml"
QM9_POLARIZABILITY = (1, "Polarizability_bohr3")  # (target index, column of the qm9pack table)


def para(text: str) -> str:
    """A paragraph wrapped to 110 columns: the markdown reads as well raw as rendered."""
    return textwrap.fill(" ".join(text.split()), 110, break_long_words=False, break_on_hyphens=False)


def relpath(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_runs(results: Path) -> list[dict]:
    """One dict per run folder holding a summary and a config: its summary, config, header, records, path."""
    runs = []
    for summary_path in sorted(results.glob("*/*/summary.json")):
        folder = summary_path.parent
        config_path = folder / "config.yaml"
        if not config_path.exists():
            continue
        runs.append({"dir": folder, "summary": json.loads(summary_path.read_text()),
                     "config": yaml.safe_load(config_path.read_text()) or {},
                     "header": read_json(folder / "header.json"),
                     "records": read_jsonl(folder / "metrics.jsonl")})
    return runs


def load_specs(path: Path = TABLES_SPEC) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------- placing runs

def place(runs: list[dict], specs: dict) -> tuple[dict, list[tuple[dict, str]]]:
    """{table id: {label: [runs by seed]}} for the tables with runs, and the runs no table takes (with why).
    A run may sit in two tables (the mod-97 baseline is the baseline of tables 1 and 2)."""
    placed = {tid: {label: [] for label in spec["rows"]} for tid, spec in specs.items()}
    unplaced = []
    for run in runs:
        task, label = run["summary"].get("task"), run["config"].get("label", "")
        homes = [tid for tid, spec in specs.items() if spec["task"] == task and label in spec["rows"]]
        for tid in homes:
            placed[tid][label].append(run)
        if not homes:
            labels = sorted({lab for spec in specs.values() if spec["task"] == task for lab in spec["rows"]})
            why = (f"label {label!r} is no row of a {task} table (rows: {', '.join(labels)})" if labels
                   else f"no table of task {task!r}")
            unplaced.append((run, why))
    for rows in placed.values():
        for label in rows:
            rows[label].sort(key=lambda r: (r["summary"].get("seed", 0), str(r["dir"])))
    return {tid: rows for tid, rows in placed.items() if any(rows.values())}, unplaced


def _sitting_span(results: Path, sitting: str) -> tuple[float, float] | None:
    """(start, end) of the sitting whose record is <results>/sittings/<sitting>*.json (named by its start)."""
    files = sorted((results / "sittings").glob(f"{sitting}*.json"))
    record = read_json(files[0]) if len(files) == 1 else {}
    if "wall_s" not in record:
        return None
    start = datetime.strptime(sitting[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    return start, start + record["wall_s"]


def notes_apply(spec: dict, rows: dict, results: Path) -> bool:
    """Whether the table's notes describe these runs: every run made at the notes' commit and started
    during one of their sittings (so a user's runs at the same commit do not get our conclusions)."""
    tie = spec.get("note_runs") or {}
    commit, spans = str(tie.get("commit", "")), [_sitting_span(results, str(s)) for s in tie.get("sittings", [])]
    spans = [s for s in spans if s]
    if not commit or not spans:
        return False
    for run in (r for runs in rows.values() for r in runs):
        header = run["header"]
        try:
            started = datetime.strptime(header.get("started_at", ""), "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            return False
        if not str(header.get("git_commit", "")).startswith(commit):
            return False
        if not any(a <= started <= b for a, b in spans):
            return False
    return True


# ---------------------------------------------------------------------------------------- numbers

def steps_to(run: dict, threshold: float) -> tuple[float, bool]:
    """(first step with val_acc >= threshold, reached?); not reached gives the steps run."""
    hit = first_step_reaching(run["records"], "val_acc", threshold)
    return (hit["step"], True) if hit else (run["summary"]["steps"], False)


def time_to(run: dict, threshold: float) -> tuple[float, bool]:
    hit = first_step_reaching(run["records"], "val_acc", threshold)
    return (hit["elapsed_s"], True) if hit else (run["summary"]["wall_s"], False)


def decimals(x: float, integer: bool = False) -> int:
    """Decimals that show three significant digits of x (none for step counts and numbers >= 100)."""
    if integer or not x or not math.isfinite(x) or abs(x) >= 100:
        return 0
    return min(8, 2 - math.floor(math.log10(abs(x))))


def fmt(x: float | None, integer: bool = False, places: int | None = None) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    places = decimals(x, integer) if places is None else places
    return f"{x:,.{places}f}"


def aggregate(values: list[tuple[float, bool]]) -> dict:
    """mean ± std over seeds; a value not reached counts as its budget, and the mean is then a bound."""
    xs = [v for v, _ in values]
    return {"mean": statistics.mean(xs) if xs else None,
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs), "reached": sum(ok for _, ok in values), "all_reached": all(ok for _, ok in values),
            "per_seed": values}


def cell(agg: dict, integer: bool = False) -> str:
    """'mean ± std (n=N)', std to the mean's precision; '> ' and 'k/N reached' when a value is a bound."""
    if not agg["n"]:
        return "–"
    places = decimals(agg["mean"], integer)
    text = f"{fmt(agg['mean'], integer, places)} ± {fmt(agg['std'], integer, places)} (n={agg['n']})"
    if agg["all_reached"]:
        return text
    return f"> {text}, {agg['reached']}/{agg['n']} reached"


@dataclass
class Column:
    key: str  # the paper figures' key, and the headline's name
    title: str
    get: Callable  # run -> (value, reached) or (None, False)
    integer: bool = False


def _summary_key(key):
    return lambda run: (run["summary"].get(key), run["summary"].get(key) is not None)


def columns(kind: str, thresholds: list[float], variances: dict) -> list[Column]:
    common = [Column("peak_gpu_mem_mb", "peak GPU MB", _summary_key("peak_gpu_mem_mb")),
              Column("wall_per_step_ms", "ms / iteration (wall)", _summary_key("wall_per_step_ms")),
              Column("train_step_ms", "ms / train step", _summary_key("train_step_ms"))]
    if kind == "accuracy":
        cols = [Column(f"steps_to_{round(t * 100)}", f"steps to {t:.0%}",
                       (lambda t: lambda run: steps_to(run, t))(t), integer=True) for t in thresholds]
        cols.append(Column("time_to_95_s", "wall s to 95%", lambda run: time_to(run, 0.95)))
        cols.append(Column("best_val_acc", "best val acc", _summary_key("best_val_acc")))
        return cols + common
    if kind == "imdb":
        return [Column("best_val_batch_acc", "best val acc, 50-batch (paper's)", _summary_key("best_val_batch_acc")),
                Column("min_val_batch_loss", "min val loss, 50-batch (paper's)", _summary_key("min_val_batch_loss")),
                Column("best_val_acc", "best val acc, full split", _summary_key("best_val_acc")),
                Column("min_val_loss", "min val loss, full split", _summary_key("min_val_loss")),
                # best and min hide a run that ends worse than it was (wd 10 runs collapse to chance)
                Column("final_val_acc", "final val acc, full split", _summary_key("final_val_acc"))] + common

    def unexplained(run):
        var = variances.get(run["dir"])
        loss = run["summary"].get("min_val_loss")
        return (loss / var, True) if var and loss is not None else (None, False)

    return [Column("min_val_loss", "min val MSE", _summary_key("min_val_loss")),
            Column("fvu", "min val MSE / Var(val target)", unexplained),
            Column("final_val_loss", "final val MSE", _summary_key("final_val_loss"))] + common


def column_values(col: Column, runs: list[dict]) -> list[tuple[float, bool]]:
    return [v for v in (col.get(r) for r in runs) if v[0] is not None]


def ratio(other: dict, row: dict) -> str:
    """other mean / row mean, as 'x4.1'; '≥' / '≤' when a mean is a bound (a value never reached)."""
    if not other["n"] or not row["n"] or not row["mean"]:
        return "–"
    if not other["all_reached"] and not row["all_reached"]:
        return "–"
    bound = "≥ " if not other["all_reached"] else "≤ " if not row["all_reached"] else ""
    return f"{bound}×{other['mean'] / row['mean']:.{2 if other['mean'] / row['mean'] < 10 else 1}f}"


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


# ---------------------------------------------------------------------------------------- QM9's scale

def qm9_table(data_dir: Path) -> list[float] | None:
    """The polarizability (bohr^3) of every characterized molecule of the local qm9pack table, in the
    dataset's order (as repro/data/qm9.py reads it), or None when the table is not there."""
    import pandas as pd

    from repro.data.qm9 import find_csv_files, read_uncharacterized
    from repro.errors import UserError

    try:
        files = find_csv_files(data_dir)
    except UserError:
        return None
    skip = set()
    for name in ("uncharacterized.txt.gz", "uncharacterized.txt"):
        if (data_dir / "qm9" / name).exists():
            skip = read_uncharacterized(data_dir / "qm9" / name)
            break
    frames = [pd.read_csv(f, usecols=["Index", QM9_POLARIZABILITY[1]]) for f in files]
    table = pd.concat(frames)
    return table[~table["Index"].isin(skip)][QM9_POLARIZABILITY[1]].astype(float).tolist()


def qm9_split(size: int, seed: int) -> tuple[list[int], list[int]]:
    """The training and validation molecule indices of a run: the task's torch.manual_seed(seed);
    torch.randperm(size), first half training (repro/tasks/qm9.py)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(size, generator=generator).tolist()
    return order[:size // 2], order[size // 2:]


def pvariance(xs: list[float]) -> float:
    """Population variance: the MSE of predicting the mean, so MSE / it is the fraction left unexplained."""
    return statistics.pvariance(xs)


def qm9_variances(runs: list[dict], alphas: list[float] | None) -> dict:
    """run folder -> Var of its validation half's targets (bohr^6), for runs of target 1 (polarizability)."""
    if alphas is None:
        return {}
    out = {}
    for run in runs:
        cfg = run["config"]
        if run["summary"].get("task") != "qm9" or cfg.get("target", 1) != QM9_POLARIZABILITY[0]:
            continue
        size = int(cfg.get("size", 100))
        if size > len(alphas):
            continue
        _, val = qm9_split(size, int(cfg.get("seed", 0)))
        out[run["dir"]] = pvariance([alphas[i] for i in val])
    return out


def qm9_scale_markdown(spec: dict, rows: dict, alphas: list[float] | None, data_dir: Path) -> str:
    if alphas is None:
        return (f"Target variances not computed: no QM9 table under {data_dir} (pass --data_dir or set "
                "GROKFAST_DATA_DIR), so the MSE / Var column is empty.\n")
    runs = [r for rs in rows.values() for r in rs]
    sizes = sorted({int(r["config"].get("size", 100)) for r in runs}) or [100]
    seeds = sorted({int(r["config"].get("seed", 0)) for r in runs})
    size = sizes[0]
    first = pvariance(alphas[:size])
    halves = [qm9_split(size, s) for s in seeds]
    train = ", ".join(fmt(pvariance([alphas[i] for i in t])) for t, _ in halves)
    val = ", ".join(fmt(pvariance([alphas[i] for i in v])) for _, v in halves)
    paper = [(row["name"], row["paper"]["min_val_loss"]) for row in spec["rows"].values()
             if row.get("paper", {}).get("min_val_loss") is not None]
    scaled = "; ".join(f"{name} {fmt(p)} × {fmt(first)} = {fmt(p * first)}" for name, p in paper)
    return (f"**Target variances** (population variance of the polarizability α, bohr⁶): the first {size} "
            f"molecules {fmt(first)}; their training halves {train} and validation halves {val} (seeds "
            f"{', '.join(map(str, seeds))}); all {len(alphas):,} molecules of the local table {fmt(pvariance(alphas))}. "
            f"The MSE / Var column divides each run's minimum validation MSE by its own validation half's "
            f"variance (the fraction of variance unexplained). In raw units, the paper's figures times the "
            f"first {size} molecules' variance: {scaled} bohr⁶.\n")


# ---------------------------------------------------------------------------------------- markdown

def run_link(run: dict, out_dir: Path) -> str:
    return f"[s{run['summary'].get('seed', '?')}]({relpath(run['dir'], out_dir)})"


def headline_markdown(tid: str, spec: dict, rows: dict, cols: list[Column]) -> str:
    """The compact table: the headline metric, paper vs ours, and the ratios to the baseline and control."""
    col = next(c for c in cols if c.key == spec["headline"])
    fvu = next((c for c in cols if c.key == "fvu"), None) if col.key == "min_val_loss" else None
    aggs = {label: aggregate(column_values(col, runs)) for label, runs in rows.items()}
    base, control = spec["baseline"], spec.get("control")
    paper = {label: row.get("paper", {}).get(col.key) for label, row in spec["rows"].items()}
    header = ["row", f"paper: {col.title}", f"ours: {col.title}, mean ± std (n)"]
    header += [fvu.title] if fvu else []
    header += ["vs baseline (paper)", "vs control"]
    lines = [f"**{spec['title']}** ([details](#{anchor(spec['title'])}))", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in spec["rows"].items():
        if not rows[label]:
            continue
        agg = aggs[label]
        vs_base = "–" if label == base or not rows.get(base) else ratio(aggs[base], agg)
        if vs_base != "–" and paper.get(base) and paper.get(label):
            vs_base += f" (paper ×{paper[base] / paper[label]:.1f})"
        vs_control = "–" if label == control or not rows.get(control) else ratio(aggs[control], agg)
        cells = [row["name"], fmt(paper[label], col.integer) if paper[label] is not None else "–",
                 cell(agg, col.integer)]
        if fvu:
            cells.append(cell(aggregate(column_values(fvu, rows[label]))))
        lines.append("| " + " | ".join(cells + [vs_base, vs_control]) + " |")
    return "\n".join(lines) + "\n"


def overview_markdown(chosen: list[str], specs: dict, placed: dict, cols: dict) -> str:
    """One small table for a README: per paper table, the Grokfast row's headline metric (ours and the
    paper's) and its ratio to the baseline and to the weight-decay control."""
    lines = ["| paper table | metric | Grokfast (paper) | vs baseline (paper) | vs wd control |", "|---|---|---|---|---|"]
    for tid in chosen:
        spec, rows = specs[tid], placed[tid]
        col = next(c for c in cols[tid] if c.key == spec["headline"])
        aggs = {label: aggregate(column_values(col, runs)) for label, runs in rows.items()}
        g, base, control = spec["grokfast"], spec["baseline"], spec.get("control")
        if not rows.get(g):
            continue
        paper = {label: row.get("paper", {}).get(col.key) for label, row in spec["rows"].items()}
        ours = cell(aggs[g], col.integer) + (f" ({fmt(paper[g], col.integer)})" if paper.get(g) is not None else "")
        vs_base = ratio(aggs[base], aggs[g]) if rows.get(base) else "–"
        if vs_base != "–" and paper.get(base) and paper.get(g):
            vs_base += f" (×{paper[base] / paper[g]:.1f})"
        vs_control = ratio(aggs[control], aggs[g]) if control and rows.get(control) else "–"
        number = spec["title"].split(",")[0]
        lines.append(f"| {number} | {col.title} | {ours} | {vs_base} | {vs_control} |")
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def table_markdown(tid: str, spec: dict, rows: dict, cols: list[Column], thresholds: list[float],
                   out_dir: Path, figures: Path, notes: bool, extra: str = "") -> str:
    from repro.plots import plot_groups  # matplotlib only when a table is drawn

    lines = [f"### {spec['title']}", ""]
    header = ["row"] + [c.title for c in cols]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in spec["rows"].items():
        if not rows[label]:
            continue
        cells = [f"**{row['name']}**"]
        for col in cols:
            values = column_values(col, rows[label])
            text = cell(aggregate(values), col.integer) if values else "–"
            paper = row.get("paper", {}).get(col.key)
            cells.append(text + (f"<br>paper: {fmt(paper, col.integer)}" if paper is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    missing = [row["name"] for label, row in spec["rows"].items() if not rows[label]]
    if missing:
        lines += ["", f"No runs here for: {', '.join(missing)}."]
    lines += ["", "Each run (the link opens its folder: config, header with the commit, metrics, curves):", ""]
    header = ["row", "run"] + [c.title for c in cols] + ["stopped"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in spec["rows"].items():
        for run in rows[label]:
            values = []
            for col in cols:
                value, reached = col.get(run)
                values.append(("> " if value is not None and not reached else "") + fmt(value, col.integer))
            stopped = run["summary"].get("stopped", "?")
            stopped = "early stop" if stopped.startswith("early_stop") else stopped
            size = run["summary"].get("population_size", 1)
            link = run_link(run, out_dir) + (f" (population of {size})" if size > 1 else "")
            lines.append("| " + " | ".join([row["name"], link] + values + [stopped]) + " |")
    lines.append("")
    if any(r["summary"].get("population_size", 1) > 1 for runs in rows.values() for r in runs):
        lines += [para("A run trained in a population shares one process and one step with its members: its "
                       "peak GPU memory, ms per iteration and wall times are the population's, not its own."), ""]
    cut = [f"{spec['rows'][label]['name']} s{r['summary']['seed']} ({r['summary']['stopped']})"
           for label in spec["rows"] for r in rows[label] if not finished(r)]
    if cut:
        lines += [para("Stopped before their budget (shown with `>`; a sitting's deadline, not the paper's budget): "
                       + "; ".join(cut) + "."), ""]
    if spec["kind"] == "accuracy" and rows.get(spec["baseline"]) and rows.get(spec["grokfast"]):
        lines += [para("; ".join(speedup(rows[spec["baseline"]], rows[spec["grokfast"]], t) for t in thresholds) + "."), ""]
    groups = {spec["rows"][label]["name"]: [r["dir"] for r in rows[label]] for label in spec["rows"] if rows[label]}
    keys = ("acc", "loss") if spec["kind"] != "regression" else ("loss",)
    figure = plot_groups(groups, figures / f"{tid}.png", title=spec["title"], stems=keys)
    lines += [f"![{tid}]({relpath(figure, out_dir)})", ""]
    if extra:
        lines += [para(extra), ""]
    if spec.get("note") and notes:
        lines += [para(spec["note"]), ""]
    return "\n".join(lines)


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
    parts = []
    for device, device_spans in sorted(spans.items()):
        mine = [r for r in runs if r["header"].get("device") == device]
        resumes = sum(len(r["header"].get("resumed", [])) for r in mine)
        tasks = ", ".join(sorted({r["summary"].get("task", "?") for r in mine}))
        n, minutes = len(device_spans), union_seconds(device_spans) / 60
        parts.append(f"on {device}, {n} sitting{'s' if n != 1 else ''}, {minutes:.1f} minutes of GPU wall time, "
                     f"which made {len(mine)} of the runs below ({resumes} of them resumed after a sitting's "
                     f"deadline{'; ' + tasks if tasks else ''})")
    return para(f"**GPU time.** Sittings (`{results.name}/sittings/`, made by `scripts/run_on_gpu.sh`, up to {jobs} "
            "runs at once under CUDA MPS): " + "; ".join(parts) + ". "
            "The runs shared the GPU, so their per-step latencies and wall times to a threshold are those of a "
            "crowded GPU, not of a run alone: `results/bench/` has the set's parts alone on an H200 "
            "(`set_parts_h200/`, `pair_h200/`) and each task alone on an H100 (`probe_h100.txt`; mod-97: the run "
            "folders in `solo_h100_modular/`).") + "\n"


def unplaced_markdown(unplaced: list[tuple[dict, str]], out_dir: Path) -> str:
    if not unplaced:
        return ""
    lines = ["## Runs in no table", "", "| run | why |", "|---|---|"]
    lines += [f"| [{r['dir'].parent.name}/{r['dir'].name}]({relpath(r['dir'], out_dir)}) | {why} |"
              for r, why in unplaced]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
OVERVIEW_BEGIN, OVERVIEW_END = "<!-- overview:begin -->", "<!-- overview:end -->"


def inject(readme: Path, body: str, tables_dir: Path, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the README's markers; links are re-based to the README's folder."""
    BEGIN, END = begin, end
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    prefix = relpath(tables_dir, readme.parent)
    body = body.replace("](", f"]({prefix}/").replace(f"]({prefix}/#", "](#") if prefix != "." else body
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + body.strip() + "\n" + END + rest.split(END, 1)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("runs"),
                        help="folder of <task>/<run>/ folders (default runs; the committed ones: results)")
    parser.add_argument("--out", type=Path, default=None, help="markdown to write (default <results>/README.md)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.90, 0.95],
                        help="validation accuracies (fractions) to count steps to (default 0.85 0.9 0.95)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also copy the tables into this file between its results markers")
    parser.add_argument("--overview", type=Path, default=None,
                        help="also write one small table (Grokfast vs baseline vs control, per paper table) into "
                             "this file between its overview markers (the top-level README)")
    parser.add_argument("--tables", nargs="*", metavar="ID",
                        help="table ids to include (default all); given alone, list the ids and exit")
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="where QM9's table is, for the target variances (default $GROKFAST_DATA_DIR, else data/)")
    args = parser.parse_args(argv)
    specs = load_specs()
    if args.tables == []:
        print("\n".join(f"{tid}  {spec['title']}" for tid, spec in specs.items()))
        return 0
    unknown = [t for t in args.tables or [] if t not in specs]
    if unknown:
        parser.error(f"no table {', '.join(unknown)} (tables: {', '.join(specs)})")
    if not args.results.is_dir():
        parser.error(f"no results folder: {args.results}")
    if any(not 0 < t <= 1 for t in args.thresholds):
        parser.error("thresholds are fractions in (0, 1]")
    out = args.out or args.results / "README.md"
    runs = load_runs(args.results)
    placed, unplaced = place(runs, specs)
    chosen = [tid for tid in specs if tid in placed and (not args.tables or tid in args.tables)]
    data_dir = args.data_dir or Path(os.environ.get("GROKFAST_DATA_DIR") or "data")
    qm9_runs = [r for tid in chosen if specs[tid]["kind"] == "regression" for rs in placed[tid].values() for r in rs]
    alphas = qm9_table(data_dir) if qm9_runs else None
    variances = qm9_variances(qm9_runs, alphas)
    cols = {tid: columns(specs[tid]["kind"], args.thresholds, variances) for tid in chosen}
    for tid in chosen:  # a headline the thresholds do not give falls back to the table's first column
        if not any(c.key == specs[tid]["headline"] for c in cols[tid]):
            specs[tid]["headline"] = cols[tid][0].key
    placed_count = len({r["dir"] for tid in chosen for rs in placed[tid].values() for r in rs})
    body = [para(f"Generated by `python scripts/summarize.py --results {args.results.as_posix()}` from the "
            f"{placed_count} run folders linked below; do not edit by hand. Cells: mean ± std over seeds (n); "
            "`>` marks a value never reached within the run's steps (its step count is used, so a mean is a "
            "lower bound). The paper's figures (one seed, GTX 1080 Ti) come from `configs/tables.yaml`."), ""]
    if not chosen:
        body += ["No run folder here belongs to a table (see below).", ""]
    sittings = sittings_markdown(args.results, runs)
    if sittings:
        body += [sittings]
    if chosen:
        body += ["## Summary", "",
                 para("One table per paper table: its headline metric, the paper's figure against ours. vs baseline "
                      "/ vs control: the baseline's (control's) mean divided by the row's, so above ×1 the row takes "
                      "fewer steps or reaches a lower loss; ≥ / ≤ where a mean is a bound; in brackets the same "
                      "ratio of the paper's figures."), ""]
        body += [headline_markdown(tid, specs[tid], placed[tid], cols[tid]) for tid in chosen]
        body += ["## Details", ""]
    for tid in chosen:
        spec, rows = specs[tid], placed[tid]
        notes = notes_apply(spec, rows, args.results)
        extra = qm9_scale_markdown(spec, rows, alphas, data_dir) if spec["kind"] == "regression" else ""
        if spec.get("note") and not notes:
            extra += ("" if not extra else "\n") + ("The notes on this table describe the committed runs (commit "
                                                    f"{spec['note_runs']['commit']}); these runs are others, so "
                                                    "they are not shown.")
        body.append(table_markdown(tid, spec, rows, cols[tid], args.thresholds, out.parent, out.parent / "figures",
                                   notes, extra.strip()))
    body.append(unplaced_markdown(unplaced, out.parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(["# Results", "", *body]).rstrip("\n") + "\n")
    if args.readme:
        inject(args.readme, "\n".join(body), out.parent)
    if args.overview:
        inject(args.overview, overview_markdown(chosen, specs, placed, cols), out.parent, OVERVIEW_BEGIN, OVERVIEW_END)
    left = f"; {len(unplaced)} in no table, listed at the end" if unplaced else ""
    print(f"wrote {out}: {len(chosen)} table{'s' if len(chosen) != 1 else ''} from {placed_count} of "
          f"{len(runs)} runs{left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
