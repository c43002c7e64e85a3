"""Entry-point glue shared by main*.py: parse the config, train, turn UserError into one line + exit 2."""
import dataclasses
import sys

from repro.config import load_config, merge, read_yaml
from repro.errors import RunAlreadyFinished, UserError
from repro.memory import check_fits


def run(config_cls, task_cls, description: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, members = split_population_flags(argv)
        cfg = load_config(config_cls, flags, description)
        if members is not None:  # the headers record the whole command, --population included
            return run_population(population_configs(cfg, members), task_cls, argv)
        check_fits(cfg, task_cls)  # before anything is allocated or written
        from repro.engine import Trainer  # after parsing, so `--help` and flag errors are instant
        trainer = Trainer(cfg, task_cls, argv)
        if trainer.is_main:
            print(start_line(trainer), flush=True)
        summary = trainer.run()
    except RunAlreadyFinished as exc:
        print(exc)
        return 0
    except UserError as exc:
        print("error: " + str(exc).replace("\n", "\\n"), file=sys.stderr)  # one line, whatever it quotes
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (inside it, the engine saves and stops)
        print("interrupted outside the training loop (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    finally:
        distributed = sys.modules.get("repro.distributed")  # loaded by the engine, not by flag errors
        if distributed:
            distributed.shutdown()
    if not trainer.is_main:  # data-parallel: rank 0 reports
        return 130 if summary["stopped"].startswith("interrupted") else 0
    keys = ("steps", "steps_to_95", "time_to_95_s", "best_val_acc", "min_val_loss", "train_step_ms",
            "wall_per_step_ms", "peak_gpu_mem_mb")
    print(f"{trainer.out_dir}: " + ", ".join(f"{k}={_short(summary[k])}" for k in keys if summary.get(k) is not None))
    if summary["stopped"].startswith("interrupted"):
        print("interrupted: resume with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


def start_line(trainer) -> str:
    """Where the run writes, how it starts, and the options that differ from the task's defaults."""
    cfg = trainer.cfg
    defaults = type(cfg)()
    changed = {k: v for k, v in cfg.to_dict().items() if v != getattr(defaults, k) and k not in ("task", "resume")}
    how = f"resuming at step {trainer.step}" if trainer.step else "starting"
    options = " ".join(f"{k}={v}" for k, v in changed.items()) or "task defaults"
    return f"{how} {trainer.out_dir} ({cfg.steps} steps on {trainer.device}): {options}"


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def split_population_flags(argv: list[str]) -> tuple[list[str], list[dict] | None]:
    """`--seeds S [S ...]` (one member per seed) or `--population FILE` (a YAML list of per-member
    overrides) out of argv -> (the other flags, the members' overrides or None for a solo run)."""
    rest, members, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--seeds":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            if j == i + 1:
                raise UserError("bad command line: --seeds needs at least one seed")
            members, i = [{"seed": s} for s in argv[i + 1:j]], j
        elif argv[i] == "--population":
            if i + 1 == len(argv):
                raise UserError("bad command line: --population needs a YAML file")
            listing = read_yaml(argv[i + 1], kind=list)
            if not listing or not all(isinstance(m, dict) for m in listing):
                raise UserError(f"population file {argv[i + 1]} must hold a non-empty list of key: value mappings")
            members, i = listing, i + 2
        else:
            rest.append(argv[i])
            i += 1
    return rest, members


def population_configs(base, members: list[dict]) -> list:
    """Each member's config: the base config (YAML + flags) with the member's overrides, validated."""
    cfgs = []
    for number, overrides in enumerate(members):
        cfg = dataclasses.replace(base, **merge(type(base), overrides, source=f"population member {number}"))
        cfg.validate()
        cfgs.append(cfg)
    return cfgs


def run_population(cfgs: list, task_cls, argv: list[str]) -> int:
    """Train the members as one population; each ends as its solo run's folder. Exit 2 when a member
    diverged (the others still finish), 130 when interrupted."""
    for cfg in cfgs:
        check_fits(cfg, task_cls)
    from repro.population_engine import PopulationTrainer
    trainer = PopulationTrainer(cfgs, task_cls, argv)
    print(f"population of {len(trainer.members)} in {trainer.out_dir} ({trainer.cfg.steps} steps on "
          f"{trainer.device})", flush=True)
    result = trainer.run()
    keys = ("steps", "steps_to_95", "best_val_acc", "min_val_loss", "stopped")
    for path, summary in result["members"].items():
        print(f"{path}: " + ", ".join(f"{k}={_short(summary[k])}" for k in keys if summary.get(k) is not None))
    if result["diverged"]:
        return 2
    return 130 if trainer.interrupted else 0
