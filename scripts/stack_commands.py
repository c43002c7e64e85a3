#!/usr/bin/env python3
r"""Solo run commands in (one per line), the same runs out, those that can train together as populations.

    scripts/reproduce_modular_ema.sh --print --device cuda | python3 scripts/stack_commands.py | \
        python3 scripts/run_commands.py --jobs 8

A line `python3 main.py ARGS` or `python3 main_mnist.py ARGS` is read as the config it would train
(flags as the entry point parses them). Runs that may share a population (repro/sweep_pack.py: same task,
same settings but for the per-member ones such as seed, learning rate, weight decay, filter, α, λ and
label, the same resume step; at most --max_group) become one `--population` command; each member still
writes its solo run's folder (<results_dir>/<task>/<run name>), so summarize.py and plot_runs.py read the
result unchanged. The population files go to --dir (default: <results_dir>/populations of the first
member). Other lines (IMDb, QM9, env-prefixed or unparsable commands, a run alone in its group, lines
matching --keep_solo) are passed through as they came; a run listed twice is kept once. Lines matching --apart
stack only with lines whose match is the same text: `--apart 'wd_ma\.yaml|baseline\.yaml'` sets apart two
groups. Output lines keep the input's order.
"""
import argparse
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repro.config import load_config  # noqa: E402
from repro.errors import UserError  # noqa: E402
from repro.sweep_pack import pack, population_job, resume_steps, stacks  # noqa: E402
from repro.sweep_spec import TASKS, Member, Sweep, solo_run_name, task_classes  # noqa: E402

ENTRY_POINTS = {script: task for task, (_, script) in TASKS.items()}


def as_member(line: str) -> tuple[Member, Path] | None:
    """The run a `python SCRIPT ARGS` line trains, as a sweep member named after its folder, and the folder
    that holds that folder; None for a line that is not such a command of a stackable task."""
    words = shlex.split(line)
    if len(words) < 2 or not Path(words[0]).name.startswith("python") or Path(words[1]).name not in ENTRY_POINTS:
        return None
    task = ENTRY_POINTS[Path(words[1]).name]
    config_cls, task_cls = task_classes(task)
    try:
        cfg = load_config(config_cls, words[2:])
    except UserError:
        return None  # population flags already, or a typo the run itself should report
    folder = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.results_dir) / task / solo_run_name(cfg, task_cls)
    member = Member(name=folder.name, seed=cfg.seed, overrides={}, cfg=cfg)
    return (member, folder.parent) if stacks(member) else None


def stack(lines: list[str], max_group: int, files_dir: Path | None = None,
          keep_solo: re.Pattern | None = None, apart: re.Pattern | None = None) -> list[str]:
    # members whose folders share a parent (and that --apart does not set apart) may share a population
    by_folder, first_line, out = {}, {}, {}
    for i, line in enumerate(lines):
        found = None if keep_solo and keep_solo.search(line) else as_member(line)
        if found is None:
            out[i] = line
            continue
        member, parent = found
        if (parent, member.name) in first_line:
            continue  # the same run again (a baseline two tables share): once is enough
        match = apart.search(line) if apart else None
        by_folder.setdefault((parent, match and match.group(0)), []).append(member)
        first_line[(parent, member.name)] = i
    for (folder, _), group_members in by_folder.items():
        for group in pack(group_members, max_group, steps=resume_steps(folder, group_members)):
            first = first_line[(folder, group.members[0].name)]
            if len(group.members) == 1:
                out[first] = lines[first]
                continue
            sweep = Sweep(group.members[0].cfg.task, group.members[0].cfg.task, (), (), ())
            job = population_job(sweep, group.members, folder, files_dir or folder.parent / "populations")
            for path, text in job.files:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            job.device = group.members[0].cfg.device
            out[first] = shlex.join([*shlex.split(lines[first])[:2], *job.command[2:]])  # python, script as given
    return [out[i] for i in sorted(out)]


def pattern(text: str) -> re.Pattern | None:
    """A REGEX option's value: compiled, or None for "" (the option off)."""
    try:
        return re.compile(text) if text else None
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_group", type=int, default=64, help="members per population at most (default 64)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the population files")
    parser.add_argument("--keep_solo", type=pattern, default="", metavar="REGEX",
                        help="lines matching it stay solo runs: a population's step does all its members' work, "
                             "so a run much longer than the others finishes later inside one")
    parser.add_argument("--apart", type=pattern, default="", metavar="REGEX",
                        help="lines matching it stack only with lines whose match is the same text: long runs in "
                             "a population of their own, whose step does only their work ('a|b': two such groups)")
    args = parser.parse_args(argv)
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    print("\n".join(stack(lines, args.max_group, args.dir, args.keep_solo, args.apart)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
