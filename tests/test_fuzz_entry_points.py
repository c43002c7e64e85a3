"""Fuzz of the four entry points: random flags with values of the right and wrong types, huge ones
included, through repro.cli.run (what main*.py call) on the real data. Every case ends with exit 0 (a
one-step run) or exit 2 and one line `error: ...`; no exception escapes.

The cases come from a seeded generator, so CI runs the same ones every time; set GROKFAST_FUZZ_SEED
(and GROKFAST_FUZZ_SCALE, a multiplier of the case counts) to explore further. Sizes are tiny, huge
(the memory check must refuse them at once) or invalid, never merely large, so a run that is accepted
trains one step in well under a second (IMDb, slow on the CPU, gets few cases)."""
import os
import random
import string
from dataclasses import fields

import pytest

from repro.cli import run
from repro.tasks.imdb import ImdbConfig, ImdbTask
from repro.tasks.mnist import MnistConfig, MnistTask
from repro.tasks.modular import ModularConfig, ModularTask
from repro.tasks.qm9 import Qm9Config, Qm9Task

SEED = int(os.environ.get("GROKFAST_FUZZ_SEED", "20261202"))
SCALE = float(os.environ.get("GROKFAST_FUZZ_SCALE", "1"))

# per entry point: classes, cases, flags that make an accepted run tiny, tiny values of its size options
TASKS = {
    "main.py": (ModularConfig, ModularTask, 150, ["--p", "11", "--dim", "8", "--num_heads", "2", "--num_layers", "1"],
                {"p": [3, 5, 11, 13], "dim": [2, 4, 8], "num_heads": [1, 2, 4], "num_layers": [1, 2],
                 "batch_size": [1, 4, 512], "window_size": [1, 3, 100], "eval_every": [0, 1, 3]}),
    "main_mnist.py": (MnistConfig, MnistTask, 80, ["--train_points", "20", "--width", "8"],
                      {"train_points": [1, 5, 20], "width": [1, 4, 16], "depth": [2, 3], "batch_size": [1, 5, 200],
                       "window_size": [1, 5], "eval_every": [0, 1]}),
    "main_qm9.py": (Qm9Config, Qm9Task, 60, ["--size", "20"],
                    {"size": [2, 5, 20], "batch_size": [1, 8, 32], "target": [0, 1, 18], "window_size": [1, 5],
                     "eval_every": [0, 1]}),
    "main_imdb.py": (ImdbConfig, ImdbTask, 30,
                     ["--num_reviews", "40", "--seq_len", "20", "--hidden_dim", "8", "--embedding_dim", "4",
                      "--vocab_size", "50", "--batch_size", "5"],
                     {"num_reviews": [8, 12, 40], "seq_len": [1, 5, 20], "hidden_dim": [1, 4, 8],
                      "embedding_dim": [1, 4], "num_layers": [1, 2], "vocab_size": [1, 10, 50],
                      "batch_size": [1, 2, 5], "eval_chunk": [1, 1000], "eval_every": [1, 50], "window_size": [1, 5]}),
}
# what every case ends with (argparse keeps the last value): the CPU, no bar, one step, no compilation
# (minutes) and no download (no network); then the data and a folder of its own
FIXED = ["--device", "cpu", "--progress", "false", "--max_steps", "1", "--compile", "false"]
NOT_FUZZED = {"task", "device", "progress", "max_steps", "compile", "download", "data_dir", "out_dir", "results_dir"}
CHOICES = {"optimizer": ["Adam", "AdamW", "SGD", "adam", "RMSprop"], "amp": ["none", "fp16", "bf16", "fp8"],
           "filter": ["none", "ema", "ma", "fir"], "filter_type": ["mean", "sum", "median"],
           "on_nonfinite": ["stop", "skip", "ignore"], "operation": ["mul", "add", "sub", "div", "pow"],
           "activation": ["ReLU", "tanh", "GELU", "swish"], "loss_function": ["MSE", "CrossEntropy", "hinge"],
           "features": ["pyg", "sanitized", "raw"]}
INT_VALUES = ["0", "1", "2", "3", "-1", "7"]
FLOAT_VALUES = ["0", "0.5", "1e-3", "0.9", "0.999", "1", "2", "-0.1", "1e308", "nan", "inf", "-inf"]
BOOL_VALUES = ["true", "false", "1", "off", "maybe"]
HUGE = ["1000000000", "1e12", str(10**20), str(2**64), "1e308", "1e400", str(10**400)]
JUNK = ["", "abc", "2.5", "nan", "-1", "0", "true", "[1]", "{a: 1}", "0x10", "1_000", " 3", "é", "a/../b", "\x00"]


def field_kinds(config_cls) -> dict:
    kinds = {f.name: f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str,
                                                                 "bool": bool}[f.type] for f in fields(config_cls)}
    return {name: kind for name, kind in kinds.items() if name not in NOT_FUZZED}


def value_for(rng: random.Random, name: str, kind: type, tiny: dict) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(JUNK)
    if roll < 0.25 and kind in (int, float):
        return rng.choice(HUGE)
    if name in tiny:
        return str(rng.choice(tiny[name]))
    if name in CHOICES:
        return rng.choice(CHOICES[name])
    if kind is bool:
        return rng.choice(BOOL_VALUES)
    if kind is int:
        return rng.choice(INT_VALUES)
    if kind is float:
        return rng.choice(FLOAT_VALUES)
    return "".join(rng.choice(string.ascii_letters + string.digits + "_-./ ") for _ in range(rng.randint(0, 12)))


def case(rng: random.Random, config_cls, tiny: dict) -> list[str]:
    kinds = field_kinds(config_cls)
    names = sorted(kinds) + sorted(config_cls.ALIASES)
    argv = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.04:  # an unknown flag, a stray word, a flag without its value
            argv += rng.choice([["--no_such_flag", "1"], ["stray"], ["--lr"]])
            continue
        name = rng.choice(names)
        field = config_cls.ALIASES.get(name, name)
        if field in NOT_FUZZED:
            continue
        kind = kinds[field]
        if kind is bool and rng.random() < 0.3:
            argv.append(f"--{name}")  # the bare form
        else:
            argv += [f"--{name}", value_for(rng, field, kind, tiny)]
    return argv


def cases():
    rng = random.Random(SEED)
    out = []
    for script, (config_cls, task_cls, count, base, tiny) in TASKS.items():
        for i in range(max(1, round(count * SCALE))):
            out.append(pytest.param(script, base + case(rng, config_cls, tiny), id=f"{script}-{i}"))
    return out


def run_case(script: str, argv: list[str], out_dir, data_dir) -> int:
    config_cls, task_cls = TASKS[script][:2]
    fixed = FIXED + (["--download", "false"] if "download" in {f.name for f in fields(config_cls)} else [])
    try:
        return run(config_cls, task_cls, "", [*argv, *fixed, "--data_dir", str(data_dir), "--out_dir", str(out_dir)])
    except SystemExit as exc:  # only --help may exit from the parser
        return exc.code


@pytest.mark.parametrize("script, argv", cases())
def test_any_flags_end_in_a_run_or_one_line(script, argv, tmp_path, data_dir, capsys):
    out_dir = tmp_path / "run"
    code = run_case(script, argv, out_dir, data_dir)  # a traceback fails the test
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    else:
        assert (out_dir / "summary.json").is_file(), argv


def test_a_nan_imdb_forward_ends_in_one_line(tmp_path, data_dir, capsys):
    """It was a traceback: torch's BCE refused the NaN probabilities of a diverged LSTM (init x 1e38)."""
    code = run_case("main_imdb.py", TASKS["main_imdb.py"][3] + ["--init_scale", "1e38"], tmp_path / "run", data_dir)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: non-finite") and len(err.splitlines()) == 1
