"""A sweep file -> its members: each a full, validated config of one task, with the run folder it trains in.

    name: alpha_lamb            # the sweep's folder: <results_dir>/sweeps/<name>/ (default: the file's stem)
    task: modular               # modular | mnist | imdb | qm9
    base: configs/modular/ema.yaml   # optional; a relative path is read from the repository root
    config: {budget: 20000, early_stop_acc: 0.95, early_stop_patience: 10}   # optional, over `base`
    grid:                       # optional: the cartesian product of these values
      alpha: [0.8, 0.9, 0.95, 0.98, 0.99]
      lamb: [0.5, 1, 2, 5, 10]
    variants:                   # optional: a list of override dicts, crossed with the grid
      - {optimizer: SGD, momentum: 0.9}
      - {optimizer: Adam}
    seeds: [0, 1, 2]

Members = variants x grid points x seeds, each config = task defaults <- base <- config <- variant <- grid
point <- seed, type-checked and validated (repro.config.merge / Config.validate) before anything runs.
The runner's own options (device, out_dir, ...) cannot be set here. A member's folder is named as its
solo run's would be (repro.config.run_name); when two members would share a name (a swept key the name
does not show, such as beta1), their label gets the keys that tell them apart ("beta1-0.98").
"""
import dataclasses
import importlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from repro.config import Config, merge, read_yaml, run_name
from repro.errors import UserError
from repro.metrics import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
# task -> (module holding CONFIG and TASK, entry point)
TASKS = {"modular": ("repro.tasks.modular", "main.py"), "mnist": ("repro.tasks.mnist", "main_mnist.py"),
         "imdb": ("repro.tasks.imdb", "main_imdb.py"), "qm9": ("repro.tasks.qm9", "main_qm9.py")}
SPEC_KEYS = ("name", "task", "base", "config", "grid", "variants", "seeds")
# set per member by the runner (flags of the child command), or by `seeds`
RUNNER_KEYS = ("seed", "device", "out_dir", "results_dir", "resume", "skip_finished", "progress")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SPEC_FILE = "sweep.yaml"


@dataclass(frozen=True)
class Member:
    name: str  # its run folder's name
    seed: int
    overrides: dict  # the variant's and grid point's values: what sets it apart in the sweep
    cfg: Config  # the full config it trains with (device, out_dir: the runner's)

    def config_dict(self) -> dict:
        """Its config as the child reads it from --config: everything but the runner's flags."""
        return {k: v for k, v in self.cfg.to_dict().items() if k not in RUNNER_KEYS or k == "seed"}


@dataclass(frozen=True)
class Sweep:
    name: str
    task: str
    swept: tuple  # keys the grid or the variants set, in file order
    seeds: tuple
    members: tuple

    @property
    def entry_point(self) -> Path:
        return REPO / TASKS[self.task][1]

    def folder(self, results_dir: Path) -> Path:
        return Path(results_dir) / "sweeps" / self.name

    def spec(self) -> dict:
        """What the sweep folder stores and a later invocation must match: every member's full config."""
        return {"sweep": self.name, "task": self.task, "swept": list(self.swept), "seeds": list(self.seeds),
                "members": [{"run": m.name, "seed": m.seed, "overrides": m.overrides, "config": m.config_dict()}
                            for m in self.members]}


def task_classes(task: str):
    module = importlib.import_module(TASKS[task][0])
    return module.CONFIG, module.TASK


def solo_run_name(cfg: Config, task_cls) -> str:
    """The folder name the entry point gives this config. run_name_part reads only self.cfg, so a bare
    instance gives it without building the task (its data and model)."""
    task = task_cls.__new__(task_cls)
    task.cfg = cfg
    return run_name(cfg, task.run_name_part())


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file; UserError (one line) for any bad key or value."""
    path = Path(path)
    data = read_yaml(path)
    where = f"sweep {path}"
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"{where}: name must be letters, digits, '_', '.' or '-', got {name!r}")
    task = data.get("task")
    if task not in TASKS:
        raise UserError(f"{where}: task must be one of {', '.join(TASKS)}, got {task!r}")
    config_cls, task_cls = task_classes(task)

    def typed(values, what: str) -> dict:
        if not isinstance(values, dict):
            raise UserError(f"{where}: {what} must be a mapping of key: value")
        values = merge(config_cls, values, source=f"{where} {what}")
        for key in values:
            if key in RUNNER_KEYS or key == "task":
                raise UserError(f"{where}: {what} sets {key!r}, which the runner sets "
                                f"({'use seeds' if key == 'seed' else 'a sweep.py option'})")
        return values

    fixed = {}
    if "base" in data:
        base = data["base"]
        if not isinstance(base, str):
            raise UserError(f"{where}: base must be a path to a config file")
        base_path = Path(base) if Path(base).is_absolute() else REPO / base
        fixed.update(typed(read_yaml(base_path), f"base {base}"))
    fixed.update(typed(data.get("config", {}), "config"))

    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must be a mapping of key: [values]")
    axes = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid key {key!r} must have a non-empty list of values")
        typed_values = [next(iter(typed({key: v}, "grid").items())) for v in values]
        name_ = typed_values[0][0]
        if name_ in axes:
            raise UserError(f"{where}: grid sets {name_!r} twice")
        axes[name_] = [v for _, v in typed_values]
        if len(set(axes[name_])) != len(axes[name_]):
            raise UserError(f"{where}: grid key {key!r} repeats a value")

    variants = data.get("variants", [{}])
    if not isinstance(variants, list) or not variants:
        raise UserError(f"{where}: variants must be a non-empty list of mappings")
    variants = [typed(v, f"variant {i + 1}") for i, v in enumerate(variants)]
    for i, variant in enumerate(variants):
        both = set(variant) & set(axes)
        if both:
            raise UserError(f"{where}: variant {i + 1} and the grid both set {sorted(both)[0]!r}")

    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds)):
        raise UserError(f"{where}: seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: seeds repeat a value")

    members = []
    for variant in variants:
        for point in itertools.product(*axes.values()):
            overrides = {**variant, **dict(zip(axes, point))}
            for seed in seeds:
                cfg = config_cls(**{**fixed, **overrides, "seed": seed})
                try:
                    cfg.validate()
                except UserError as exc:
                    raise UserError(f"{where}: member {overrides or '(base)'} seed {seed}: {exc}") from None
                members.append(Member("", seed, overrides, cfg))
    swept = tuple(dict.fromkeys([*axes, *(k for v in variants for k in v)]))
    members = _named(members, task_cls, where)
    return Sweep(name, task, swept, tuple(seeds), tuple(members))


def _named(members: list[Member], task_cls, where: str) -> list[Member]:
    """Give each member its solo run's folder name, labelled where two would share one."""
    names = [solo_run_name(m.cfg, task_cls) for m in members]
    by_name = {}
    for i, n in enumerate(names):
        by_name.setdefault(n, []).append(i)
    for indices in by_name.values():
        if len(indices) == 1:
            continue
        dicts = [members[i].cfg.to_dict() for i in indices]
        differing = [k for k in dicts[0] if len({repr(d[k]) for d in dicts}) > 1]
        if not differing:
            a, b = (members[i] for i in indices[:2])
            raise UserError(f"{where}: two members are the same run ({a.overrides or '(base)'} and "
                            f"{b.overrides or '(base)'}, seed {a.seed})")
        for i in indices:
            cfg = members[i].cfg
            extra = "_".join(f"{k}-{_short(getattr(cfg, k))}" for k in differing)
            label = f"{cfg.label}_{extra}" if cfg.label else extra
            members[i] = dataclasses.replace(members[i], cfg=dataclasses.replace(cfg, label=label))
            names[i] = solo_run_name(members[i].cfg, task_cls)
    seen = {}
    for i, n in enumerate(names):
        if n in seen:
            raise UserError(f"{where}: members {members[seen[n]].overrides} and {members[i].overrides} "
                            f"would share the run folder {n}")
        seen[n] = i
    return [dataclasses.replace(m, name=n) for m, n in zip(members, names)]


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def store_or_check_spec(sweep: Sweep, folder: Path, write: bool = True) -> None:
    """First run: store the expanded sweep in its folder. Later runs: refuse (one line) if it changed."""
    spec = yaml.safe_load(yaml.safe_dump(sweep.spec(), sort_keys=False))  # as it reads back from the file
    path = folder / SPEC_FILE
    if path.exists():
        old = read_yaml(path)
        if old != spec:
            raise UserError(f"{folder} holds another sweep ({_first_difference(old, spec)}): run the sweep "
                            f"file it was made from, or give this one another name or --results_dir")
        return
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))


def _first_difference(old: dict, new: dict) -> str:
    for key in ("sweep", "task", "swept", "seeds"):
        if old.get(key) != new.get(key):
            return f"{key} was {old.get(key)!r}, now {new.get(key)!r}"
    old_members, new_members = old.get("members", []), new["members"]
    if len(old_members) != len(new_members):
        return f"{len(old_members)} members, now {len(new_members)}"
    for i, (was, now) in enumerate(zip(old_members, new_members)):
        for key, value in now["config"].items():
            if was["config"].get(key) != value:
                return f"member {i + 1} ({now['run']}): {key} was {was['config'].get(key)!r}, now {value!r}"
        if was != now:
            return f"member {i + 1} ({now['run']}) differs"
    return "its spec differs"
