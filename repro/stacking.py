"""Several seeds of one configuration trained as one model (--stack_seeds 0,1,2).

These models are tiny: a mod-97 step is ~100 kernels of a few microseconds each, so an H100 spends a run
waiting on launches, and runs sharing it under MPS still serialise. Stacking S seeds' parameters along
a new first dimension runs all S in the same (batched) kernels: S runs for about the GPU time of one.

Nothing couples the members. The loss is the sum of their mean losses (member s's gradient is its own);
Adam/AdamW with their weight decay and both Grokfast filters act element by element, so every member
makes the update its own run would make, up to the rounding of batched kernels. Global-norm clipping
would couple them, so the config refuses it.

The stack trains in its own folder (<results>/<task>/stacks/<name>, with the checkpoint, so it resumes
like any run). When it ends, each member gets an ordinary run folder (config, header, metrics, summary,
plot), cut at its own early stop, beside the runs made one at a time; its summary says it was stacked
(its wall clock, latency and memory are the whole stack's).
"""
import dataclasses
import json
import os
from pathlib import Path

from repro.config import Config, parse_seeds, run_name, save_config
from repro.errors import RunAlreadyFinished, UserError
from repro.metrics import atomic_write_text, summarize


def stacked_task_class(task_cls):
    stacked = getattr(task_cls, "stacked", None)
    if stacked is None:
        raise UserError(f"task {task_cls.name} cannot stack seeds (--stack_seeds): only modular can")
    return stacked


def member_config(cfg: Config, seed: int) -> Config:
    return dataclasses.replace(cfg, seed=seed, stack_seeds="", out_dir="", resume=False)


def stack_dir(cfg: Config, task) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.results_dir) / task.name / "stacks" / run_name(cfg, task.run_name_part())


def member_dirs(cfg: Config, task) -> list[Path]:
    """Where the members' run folders go: beside single runs, or under --out_dir/members."""
    dirs = []
    for seed, member in zip(task.seeds, task.members):
        name = run_name(member_config(cfg, seed), member.run_name_part())
        dirs.append(Path(cfg.out_dir) / "members" / name if cfg.out_dir
                    else Path(cfg.results_dir) / task.name / name)
    return dirs


def _finished(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.exists() and not json.loads(path.read_text())["stopped"].startswith("interrupted")


def check_member_dirs(cfg: Config, task) -> None:
    """Before training: skip a stack whose members all finished (--skip_finished); refuse one that would
    overwrite another run's folder."""
    dirs = member_dirs(cfg, task)
    if cfg.skip_finished and all(_finished(d) for d in dirs):
        raise RunAlreadyFinished(", ".join(str(d) for d in dirs))
    for d in dirs:
        if (d / "metrics.jsonl").exists() or (d / "summary.json").exists():
            raise UserError(f"{d} already holds a run: a stack writes its members there when it ends "
                            f"(remove it, or choose another --label)")


def member_records(records: list[dict], seed: int) -> list[dict]:
    prefix = f"s{seed}/"
    return [{"step": r["step"], **{k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)},
             "elapsed_s": r["elapsed_s"]} for r in records]


def early_stop_index(records: list[dict], acc: float, patience: int) -> int | None:
    """The index of the evaluation at which a run alone would have met the early-stop rule (the engine's
    _check_early_stop: val_acc >= acc for `patience` evaluations in a row), or None."""
    if not acc or not patience:
        return None
    streak = 0
    for i, record in enumerate(records):
        streak = streak + 1 if record.get("val_acc", 0.0) >= acc else 0
        if streak >= patience:
            return i
    return None


def write_member_runs(trainer, wall_s: float, peak_mb: float | None) -> list[Path]:
    """One ordinary run folder per member, from the finished stack's records."""
    from repro import plots

    cfg, task = trainer.cfg, trainer.task
    stack_folder = trainer.out_dir
    header = json.loads((stack_folder / "header.json").read_text())
    stack_records = trainer.log.records
    dirs = member_dirs(cfg, task)
    for seed, member, run_dir in zip(task.seeds, task.members, dirs):
        records = member_records(stack_records, seed)
        cut = early_stop_index(records, cfg.early_stop_acc, cfg.early_stop_patience)
        if cut is not None:
            records = records[:cut + 1]
            stopped = (f"early_stop: val_acc >= {cfg.early_stop_acc:g} for {cfg.early_stop_patience} "
                       f"evaluations at step {records[-1]['step']}")
            steps, wall = records[-1]["step"], records[-1]["elapsed_s"]
        else:
            stopped, steps, wall = trainer.stopped, trainer.step, wall_s
        stack_note = {"seeds": task.seeds, "folder": os.path.relpath(stack_folder, run_dir),
                      "note": "trained with the other seeds as one stacked model: wall clock, latency and "
                              "GPU memory are the whole stack's"}
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(member_config(cfg, seed), run_dir / "config.yaml")
        atomic_write_text(run_dir / "header.json", json.dumps({**header, "stack": stack_note}, indent=2) + "\n")
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        summary = {"task": task.name, "run": run_dir.name, "seed": seed, "filter": cfg.filter}
        summary.update(summarize(records, steps, wall, trainer.timer.mean_ms, peak_mb, header["device"], stopped))
        summary["eval_ms"] = trainer.eval_timer.mean_ms
        summary.update(member.table_metrics(records))
        summary["stack"] = stack_note
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if records:
            plots.plot_run(run_dir)
    return dirs
