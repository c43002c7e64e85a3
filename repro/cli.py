"""Entry-point glue shared by main*.py: parse the config, train, turn UserError into one line + exit 2."""
import sys

from repro.config import load_config
from repro.errors import RunAlreadyFinished, UserError
from repro.memory import check_fits


def run(config_cls, task_cls, description: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(config_cls, argv, description)
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
