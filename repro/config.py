"""Experiment configuration: task defaults <- YAML file <- command-line flags, into a frozen dataclass.

Unknown keys and wrong types are errors that name the key (nanoGPT's configurator, made strict).
Flag names follow the reference scripts (`--filter ema --alpha 0.98 --lamb 2.0 --weight_decay 0.005`).
"""
import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from repro.errors import UserError

FILTERS = ("none", "ema", "ma", "ema_highpass")
OPTIMIZERS = ("Adam", "AdamW", "SGD")
FILTER_TYPES = ("mean", "sum")
NONFINITE_POLICIES = ("stop", "skip")
AMP_MODES = ("none", "fp16", "bf16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
MAX_SEED = 2**32  # seeds feed generators as seed * 1_000_003 + epoch, which must fit in 64 bits
FLOAT32_MAX = 3.4028234663852886e38  # parameters are float32: a larger step size overflows in the update


@dataclass(frozen=True)
class Config:
    """Options every experiment shares. Tasks subclass this and add (or re-default) their own."""

    task: str = ""
    label: str = ""
    seed: int = 0
    # optimisation
    budget: int = 300_000  # optimisation steps
    batch_size: int = 512
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    weight_decay: float = 0.0
    optimizer: str = "Adam"  # torch.optim.Adam couples L2 decay into the gradient; AdamW decouples it
    momentum: float = 0.0  # SGD only (the reviewers' heavy-ball baseline)
    nesterov: bool = False  # SGD only: Nesterov momentum instead of heavy-ball
    warmup_steps: int = 0  # linear LR warm-up; the reference's factor is min(update / warmup, 1) from update 0
    clip_grad_norm: float = 0.0  # 0 = off; clipping happens before the filter, as in the reference
    grad_accum_steps: int = 1  # micro-batches per update: the batch is split, gradients summed, filtered once
    amp: str = "none"  # autocast for the forward: none, fp16 (with a GradScaler) or bf16
    # CUDA matmuls with TF32 inputs (10 mantissa bits); False: strict float32. cuDNN (IMDb's LSTM) keeps
    # torch's default either way: TF32 allowed
    tf32: bool = False
    # Grokfast filter
    filter: str = "none"
    alpha: float = 0.98
    window_size: int = 100
    lamb: float = 2.0
    filter_type: str = "mean"
    two_stage: bool = False  # MA only: the filter is off for the first 500 steps (reference ablation)
    # run control
    device: str = "auto"
    data_dir: str = ""  # empty: $GROKFAST_DATA_DIR, else data/
    results_dir: str = "runs"
    out_dir: str = ""  # empty: <results_dir>/<task>/<run name>
    max_steps: int = 0  # cap on the budget, for smoke runs; 0 = no cap
    early_stop_acc: float = 0.0  # stop once val acc >= this ...
    early_stop_patience: int = 0  # ... for this many consecutive evaluations; 0 = never stop early
    log_every_evals: int = 50  # evaluations buffered on the device between host syncs
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end
    resume: bool = False
    skip_finished: bool = False  # a run folder with a final summary: exit 0; with a checkpoint: resume
    on_nonfinite: str = "stop"
    progress: bool = True
    cuda_graphs: bool = True  # on CUDA, replay forward+backward (and evaluation) as CUDA graphs
    compile: bool = False  # torch.compile the task's loss (worth it for long runs)

    # reference flag spellings -> our field names; tasks extend this
    ALIASES: ClassVar[dict] = {}
    # allowed values of string options; a value matching one in another case is taken as that one
    # (`--optimizer adam` is Adam). Tasks add theirs.
    CHOICES: ClassVar[dict] = {"optimizer": OPTIMIZERS, "amp": AMP_MODES, "filter": FILTERS,
                               "filter_type": FILTER_TYPES, "on_nonfinite": NONFINITE_POLICIES}
    # --help: one line per option (what it is, its values and unit); the choices and the default are
    # appended. A task's HELP adds to (or replaces entries of) this one.
    HELP: ClassVar[dict] = {
        "label": "a name for the run, appended to its folder name (the reproduce scripts use the table row)",
        "seed": "random seed of the data split, initial weights and batch order; integer in [0, 2^32)",
        "budget": "optimisation steps of the whole run; schedules that follow the run's length (MNIST's log "
                  "evaluation grid) use it. --max_steps stops a run earlier without changing them",
        "batch_size": "examples per optimisation step (>= 1)",
        "lr": "learning rate (> 0)",
        "beta1": "Adam/AdamW beta1, in [0, 1)",
        "beta2": "Adam/AdamW beta2, in [0, 1)",
        "weight_decay": "weight decay (>= 0); Adam and SGD add it to the gradient (L2), AdamW decouples it",
        "optimizer": "Adam couples weight decay into the gradient (L2), AdamW decouples it; SGD uses --momentum",
        "momentum": "SGD momentum (>= 0); other optimizers ignore it",
        "nesterov": "SGD only: Nesterov momentum (needs --momentum > 0)",
        "warmup_steps": "steps of linear learning-rate warm-up, factor min(step / warmup_steps, 1); 0 = none",
        "clip_grad_norm": "clip the gradients' total L2 norm to this, before the filter; 0 = off",
        "grad_accum_steps": "micro-batches per step (1 .. batch_size): the batch is split, gradients summed, "
                            "filtered once",
        "amp": "autocast the forward: none (float32), fp16 (with a gradient scaler) or bf16",
        "tf32": "CUDA only: matmuls take TF32 inputs (faster on Ampere and later; the inputs of each "
                "product are rounded to 10 mantissa bits); false keeps them strict float32 (cuDNN, "
                "e.g. IMDb's LSTM, keeps torch's default: TF32 allowed)",
        "filter": "the Grokfast filter: none, ema (--alpha, --lamb), ma (--window_size, --lamb, --filter_type) "
                  "or ema_highpass (--alpha, --lamb: g += lamb*(g - EMA), the fast part amplified; not the paper's)",
        "alpha": "EMA decay, in [0, 1): h = alpha*h + (1-alpha)*g, then g += lamb*h",
        "window_size": "MA window, in steps (>= 1)",
        "lamb": "the filter's gain lambda: g += lamb * (EMA or MA of past gradients)",
        "filter_type": "MA: add the mean or the sum of the window",
        "two_stage": "MA only: no filter for the first 500 steps (the reference's ablation)",
        "device": "auto (cuda when available, else cpu), cpu, cuda or cuda:N",
        "data_dir": "folder of the datasets; empty: $GROKFAST_DATA_DIR, else data/",
        "results_dir": "runs are written to <results_dir>/<task>/<run name>/",
        "out_dir": "the run folder itself (instead of one under --results_dir); empty: the default",
        "max_steps": "stop after this many steps, keeping --budget and its schedules (a smoke run, or one "
                     "segment of a long run that --resume continues); 0 = run the whole budget",
        "early_stop_acc": "stop early once validation accuracy >= this (a fraction in [0, 1]) has held for "
                          "--early_stop_patience evaluations",
        "early_stop_patience": "evaluations, not steps, that validation accuracy must hold >= --early_stop_acc "
                               "before the run stops (mod-97 evaluates every 10 steps: 100 = 1,000 steps); "
                               "0 = never stop early",
        "log_every_evals": "evaluations kept on the device between writes to metrics.jsonl (>= 1)",
        "checkpoint_every": "steps between checkpoints (checkpoint.pt in the run folder); 0 = at the end only",
        "resume": "continue from the run folder's checkpoint",
        "skip_finished": "a run folder already holding a finished run: say 'skipped' and exit 0; one with a "
                         "checkpoint: resume it",
        "on_nonfinite": "a non-finite loss: stop the run (with a checkpoint) or skip that step",
        "progress": "a progress bar; false: plain lines, for log files",
        "cuda_graphs": "on CUDA, replay forward + backward (and evaluation) as CUDA graphs",
        "compile": "torch.compile the task's loss (pays off in long runs)",
    }

    def validate(self) -> None:
        """Raise UserError for values no run can use (like torch.optim's __init__ checks)."""
        checks = [
            (0 <= self.seed < MAX_SEED, f"seed must be in [0, {MAX_SEED})"),
            (self.budget >= 1, "budget must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive finite number"),
            (0.0 <= self.beta1 < 1.0, "beta1 must be in [0, 1)"),
            (0.0 <= self.beta2 < 1.0, "beta2 must be in [0, 1)"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay must be >= 0"),
            (self.momentum >= 0 and math.isfinite(self.momentum), "momentum must be a finite number >= 0"),
            (not self.nesterov or (self.optimizer == "SGD" and self.momentum > 0),
             "nesterov needs optimizer SGD and momentum > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.clip_grad_norm >= 0, "clip_grad_norm must be >= 0 (0 = off)"),
            (1 <= self.grad_accum_steps <= self.batch_size, "grad_accum_steps must be in [1, batch_size]"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.filter in FILTERS, f"filter must be one of {', '.join(FILTERS)}"),
            (0.0 <= self.alpha < 1.0, "alpha must be in [0, 1)"),
            (self.window_size >= 1, "window_size must be >= 1"),
            (math.isfinite(self.lamb), "lamb must be finite"),
            (self.filter_type in FILTER_TYPES, f"filter_type must be one of {', '.join(FILTER_TYPES)}"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (0.0 <= self.early_stop_acc <= 1.0, "early_stop_acc must be in [0, 1]"),
            (self.early_stop_patience >= 0, "early_stop_patience must be >= 0"),
            (self.log_every_evals >= 1, "log_every_evals must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.on_nonfinite in NONFINITE_POLICIES, f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}"),
            (DEVICE_PATTERN.fullmatch(self.device) is not None, "device must be auto, cpu, cuda or cuda:N"),
        ]
        checks += [("\0" not in getattr(self, f.name), f"{f.name} must not contain a NUL character")
                   for f in user_fields(type(self)) if _field_type(f) is str]
        checks += [(abs(getattr(self, name)) <= FLOAT32_MAX, f"{name} must be at most {FLOAT32_MAX:.3g} (float32)")
                   for name in ("lr", "weight_decay", "momentum", "lamb")]
        # Adam's first step moves a parameter by up to lr / (1 - beta1), in float32
        checks.append((self.optimizer == "SGD" or not 0.0 <= self.beta1 < 1.0
                       or self.lr / (1.0 - self.beta1) < FLOAT32_MAX,
                       "lr / (1 - beta1) must stay below float32's largest value"))
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid config: {message}")

    @property
    def steps(self) -> int:
        """Steps this run will take: the budget, capped by --max_steps."""
        return min(self.budget, self.max_steps) if self.max_steps else self.budget

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in user_fields(type(self))}


def user_fields(cls) -> list:
    return list(fields(cls))


def _field_type(f) -> type:
    # `from __future__ import annotations` is not used, so f.type is the class itself
    return f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]


def coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a YAML or flag value to the field's type, or raise UserError naming the key."""
    def bad() -> UserError:
        return UserError(f"config key {key!r} must be {kind.__name__}, got {value!r}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad()
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad()
    if isinstance(value, bool):  # bool is an int subclass; never accept it as a number
        raise bad()
    if isinstance(value, str):  # flags, and YAML 1.1 reads `1e-3` as a string
        try:
            value = float(value) if kind is float or not value.lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise bad() from None
    if kind is float and isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float's range
            raise bad() from None
    if kind is int and isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():  # `3e5` is an int, `2.5` is not
            raise bad()
        return int(value)
    raise bad()


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: explicit keys may override it
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error reports it
                continue
            if first is not None:
                where = f"line {line}" if first == line else f"lines {first} and {line}"
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice ({where})")
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, kind: type = dict) -> dict | list:
    """A YAML file holding a mapping (a config) or, with kind=list, a list; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise UserError(f"config file {path} cannot be read: {type(exc).__name__}: {reason}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or kind()
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: e.g. a date like 2001-02-30
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"config file {path} is not valid YAML: {first_line}") from None
    if not isinstance(data, kind):
        what = "a mapping of key: value" if kind is dict else "a list"
        raise UserError(f"config file {path} must hold {what}")
    return data


def merge(cls, overrides: Mapping[str, Any], source: str = "config") -> dict:
    """Check `overrides` against the fields of `cls` (aliases resolved), returning typed values."""
    known = {f.name: f for f in user_fields(cls)}
    aliases = cls.ALIASES
    typed = {}
    for key, value in overrides.items():
        name = aliases.get(key, key)
        if name not in known:
            raise UserError(f"unknown {source} key {key!r} for task {cls.task or cls.__name__}")
        typed[name] = canonical_choice(cls, name, coerce(key, value, _field_type(known[name])))
    return typed


def canonical_choice(cls, name: str, value: Any) -> Any:
    """`value` as spelled in the field's choices when it matches one in another case ('adam' -> 'Adam');
    anything else unchanged (validate() rejects what no choice matches)."""
    choices = _class_mapping(cls, "CHOICES").get(name)
    if not choices or not isinstance(value, str):
        return value
    return {c.lower(): c for c in choices}.get(value.lower(), value)


def _class_mapping(cls, attr: str) -> dict:
    """A ClassVar mapping merged along the class hierarchy, subclasses' entries winning."""
    merged = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get(attr, {}))
    return merged


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2 via UserError, not argparse's usage dump
        raise UserError(f"bad command line: {message}".replace("\n", "\\n"))


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    # RawDescription: the entry points' docstrings hold example commands, one per line
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML",
                        help="a file of option: value lines, e.g. one from configs/<task>/; flags override it")
    helps, choices = _class_mapping(cls, "HELP"), _class_mapping(cls, "CHOICES")
    aliases = {}
    for alias, name in cls.ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    for f in user_fields(cls):
        if f.name == "task":
            continue
        names = [f"--{f.name}"] + [f"--{a}" for a in aliases.get(f.name, [])]
        kind = _field_type(f)
        default = f.default
        text = helps.get(f.name, "")
        if f.name in choices:
            text += " (any case)"
        if kind is bool:
            text += "; true or false, the bare flag means true"
        text = f"{text} (default {default!r})" if kind is str else f"{text} (default {default})"
        text = text.strip().replace("%", "%%")  # argparse formats help with %
        if kind is bool:  # `--two_stage` or `--two_stage false`
            parser.add_argument(*names, dest=f.name, nargs="?", const="true", metavar="BOOL", help=text)
        else:
            metavar = "{" + ",".join(choices[f.name]) + "}" if f.name in choices else kind.__name__.upper()
            parser.add_argument(*names, dest=f.name, metavar=metavar, help=text)
    return parser


def load_config(cls, argv: list[str] | None = None, description: str = ""):
    """defaults of `cls` <- --config YAML <- flags; validated; raises UserError on any problem."""
    args = vars(build_parser(cls, description).parse_args(sys.argv[1:] if argv is None else argv))
    config_path = args.pop("config", None)
    values = merge(cls, read_yaml(config_path), source=f"config file {config_path}") if config_path else {}
    values.update(merge(cls, args, source="flag"))
    values.pop("task", None)
    cfg = cls(**values)
    cfg.validate()
    return cfg


def run_name(cfg: Config, task_part: str) -> str:
    """A folder name from the hyperparameters that matter; `:g` keeps 0.1 and 0.5 apart."""
    parts = [task_part]
    if cfg.filter == "ema":
        parts.append(f"ema_a{cfg.alpha:g}_l{cfg.lamb:g}")
    elif cfg.filter == "ema_highpass":
        parts.append(f"emahp_a{cfg.alpha:g}_l{cfg.lamb:g}")
    elif cfg.filter == "ma":
        parts.append(f"ma_w{cfg.window_size}_l{cfg.lamb:g}" + ("_sum" if cfg.filter_type == "sum" else "")
                     + ("_2stage" if cfg.two_stage else ""))
    else:
        parts.append("none")
    parts.append(f"{cfg.optimizer.lower()}_lr{cfg.lr:g}_wd{cfg.weight_decay:g}")
    if cfg.optimizer == "SGD" and cfg.momentum:
        parts.append(f"m{cfg.momentum:g}" + ("_nest" if cfg.nesterov else ""))
    if cfg.label:
        parts.append(cfg.label)
    parts.append(f"s{cfg.seed}")
    return "_".join(parts)


def save_config(cfg: Config, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")  # temp file + rename: a kill never leaves half a file
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)
