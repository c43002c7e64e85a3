"""Bad input ends with one line `error: ...` naming the problem and exit status 2: no traceback, and
no run folder created or half-written. In-process through the entry points' function (repro.cli.run),
plus a few real processes for the end-to-end "no traceback"."""
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from repro.cli import run
from repro.tasks.imdb import ImdbConfig, ImdbTask
from repro.tasks.mnist import MnistConfig, MnistTask
from repro.tasks.modular import ModularConfig, ModularTask
from repro.tasks.qm9 import Qm9Config, Qm9Task

REPO = Path(__file__).resolve().parents[1]
TASKS = {"main.py": (ModularConfig, ModularTask), "main_mnist.py": (MnistConfig, MnistTask),
         "main_imdb.py": (ImdbConfig, ImdbTask), "main_qm9.py": (Qm9Config, Qm9Task)}
FAST = ["--device", "cpu", "--progress", "false", "--max_steps", "2"]

# (script, flags, words the message must contain); {tmp} / {data} / {...} are filled in by `expand`
CASES = [
    # values and types
    ("main.py", ["--lr", "-1"], "lr must be a positive"),
    ("main.py", ["--lr", "abc"], "'lr' must be float"),
    ("main.py", ["--alpha", "1"], "alpha must be in [0, 1)"),
    ("main.py", ["--window_size", "0"], "window_size must be >= 1"),
    ("main.py", ["--filter", "fir"], "filter must be one of"),
    ("main.py", ["--filter_type", "median"], "filter_type must be one of"),
    ("main.py", ["--optimizer", "RMSprop"], "optimizer must be one of"),
    ("main.py", ["--budget", "0"], "budget must be >= 1"),
    ("main.py", ["--batch_size", "1.5"], "'batch_size' must be int"),
    ("main.py", ["--two_stage", "maybe"], "'two_stage' must be bool"),
    ("main.py", ["--lamb", "nan"], "lamb must be finite"),
    ("main.py", ["--momentum", "inf"], "momentum must be a finite number"),
    ("main.py", ["--weight_decay", "-0.1"], "weight_decay must be >= 0"),
    # beyond float32, the parameters' type, a step overflows in the optimizer or the filter
    ("main.py", ["--lr", "1e39"], "lr must be at most 3.4e+38 (float32)"),
    ("main.py", ["--weight_decay", "1e39"], "weight_decay must be at most 3.4e+38 (float32)"),
    ("main.py", ["--filter", "ema", "--lamb", "1e39"], "lamb must be at most 3.4e+38 (float32)"),
    ("main_imdb.py", ["--init_scale", "1e39"], "init_scale must be a positive number at most 3.4e+38"),
    ("main.py", ["--seed", "-1"], "seed must be in"),
    ("main.py", ["--early_stop_acc", "2"], "early_stop_acc must be in [0, 1]"),
    ("main.py", ["--on_nonfinite", "ignore"], "on_nonfinite must be one of"),
    ("main.py", ["--grad_accum_steps", "0"], "grad_accum_steps must be in [1, batch_size]"),
    ("main.py", ["--batch_size", "8", "--grad_accum_steps", "9"], "grad_accum_steps must be in [1, batch_size]"),
    ("main.py", ["--amp", "fp8"], "amp must be one of"),
    ("main.py", ["--p", "2"], "p must be >= 3"),
    ("main.py", ["--operation", "pow"], "operation must be one of"),
    ("main.py", ["--dim", "30", "--num_heads", "4"], "dim must be a positive multiple of num_heads"),
    # empty splits
    ("main.py", ["--train_fraction", "0.0001"], "of the 9312 equations (p=97) leaves 0 for training"),
    ("main.py", ["--p", "3", "--train_fraction", "0.1"], "of the 6 equations (p=3) leaves 0 for training"),
    # flags
    ("main.py", ["--unknown_flag", "1"], "unrecognized arguments: --unknown_flag"),
    ("main.py", ["--lr"], "argument --lr: expected one argument"),
    ("main.py", ["--filt", "ema"], "unrecognized arguments: --filt"),  # no abbreviations
    # device
    ("main.py", ["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    ("main.py", ["--device", "cuda:x"], "device must be auto, cpu, cuda or cuda:N"),
    ("main.py", ["--device", "cuda"], "CUDA is not available"),
    # config files
    ("main.py", ["--config", "{tmp}/missing.yaml"], "config file not found"),
    ("main.py", ["--config", "{yaml:lr: [1, 2]\n}"], "'lr' must be float"),
    ("main.py", ["--config", "{yaml:- a\n- b\n}"], "must hold a mapping"),
    ("main.py", ["--config", "{yaml:filter: ema\n  alpha: 0.9\n}"], "is not valid YAML"),
    ("main.py", ["--config", "{yaml:seed: 2001-02-30\n}"], "is not valid YAML"),
    ("main.py", ["--config", "{yaml:alpah: 0.9\n}"], "unknown config file"),
    ("main.py", ["--config", "{yaml:\xff\xfe}"], "cannot be read"),
    ("main.py", ["--config", "{tmp}"], "config file not found"),  # a directory
    ("main_mnist.py", ["--config", "{yaml:p: 97\n}"], "unknown config file"),  # another task's option
    ("main_qm9.py", ["--config", "{yaml:init_scale: [3]\n}"], "'init_scale' must be float"),
    # run folder
    ("main.py", ["--resume"], "--resume: no run in"),
    ("main.py", ["--out_dir", "{file}"], "exists and is not a directory"),
    ("main.py", ["--resume", "--out_dir", "{corrupt_checkpoint}"], "checkpoint.pt is unusable"),
    # task options
    ("main_mnist.py", ["--train_points", "0"], "train_points must be in"),
    ("main_mnist.py", ["--activation", "swish"], "activation must be one of"),
    ("main_mnist.py", ["--loss_function", "hinge"], "loss_function must be one of"),
    ("main_mnist.py", ["--depth", "1"], "depth must be >= 2"),
    ("main_imdb.py", ["--num_reviews", "3"], "num_reviews must be >= 8"),
    ("main_imdb.py", ["--eval_every", "0"], "eval_every must be >= 1"),
    ("main_imdb.py", ["--eval_chunk", "0"], "eval_chunk must be >= 1"),
    ("main_qm9.py", ["--size", "1"], "size must be >= 2"),
    ("main_qm9.py", ["--target", "19"], "target must be in [0, 19)"),
    ("main_qm9.py", ["--features", "raw"], "features must be one of"),
    ("main_qm9.py", ["--size", "100000000"], "size 100000000 exceeds the 130831 molecules of QM9"),
    ("main_imdb.py", ["--num_reviews", "40", "--batch_size", "11"], "batch_size 11 exceeds the 10 validation reviews"),
    # data
    ("main_mnist.py", ["--data_dir", "{file}"], "is not a directory"),
    ("main_mnist.py", ["--data_dir", "{tmp}/nowhere"], "MNIST not found"),
    ("main_mnist.py", ["--data_dir", "{mnist_truncated}"], "is truncated or corrupt"),
    ("main_mnist.py", ["--data_dir", "{mnist_garbage}"], "is truncated or corrupt"),
    ("main_imdb.py", ["--data_dir", "{imdb_truncated}"], "cannot be read (EOFError"),
    ("main_imdb.py", ["--data_dir", "{imdb_columns}"], "lacks column(s) review, sentiment"),
    ("main_imdb.py", ["--data_dir", "{data}", "--batch_size", "300"], "exceeds the 250 validation reviews"),
    ("main_qm9.py", ["--data_dir", "{qm9_truncated}"], "is unreadable (corrupt or truncated?)"),
    ("main_qm9.py", ["--data_dir", "{file}"], "is not a directory"),
    ("main_qm9.py", ["--data_dir", "{qm9_abc}"], "line 11 (Index 10), column Polarizability_bohr3: 'abc' is not a number"),
    ("main_qm9.py", ["--data_dir", "{qm9_nan}"], "line 11 (Index 10), column Polarizability_bohr3: 'NaN' is not a finite"),
]


def _truncate(src: Path, dst: Path, keep: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:keep])


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Copies of the real data with one file truncated or corrupt."""
    root = tmp_path_factory.mktemp("bad_data")
    raw = data_dir / "mnist" / "MNIST" / "raw"
    dirs = {}
    for name in ("mnist_truncated", "mnist_garbage"):
        dst = root / name / "mnist" / "MNIST" / "raw"
        shutil.copytree(raw, dst)
        dirs[name] = root / name
    target = root / "mnist_truncated" / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    target.chmod(0o644)
    _truncate(raw / "train-images-idx3-ubyte.gz", target, 100_000)
    labels = root / "mnist_garbage" / "mnist" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    labels.write_bytes(gzip.compress(b"not an idx file" * 100))
    imdb = "imdb/IMDB_Dataset_10k.csv.gz"
    _truncate(data_dir / imdb, root / "imdb_truncated" / imdb, 20_000)
    dirs["imdb_truncated"] = root / "imdb_truncated"
    columns = root / "imdb_columns" / "imdb" / "IMDB Dataset.csv"
    columns.parent.mkdir(parents=True)
    columns.write_text("text,label\n" + "".join(f"review {i},positive\n" for i in range(2000)))
    dirs["imdb_columns"] = root / "imdb_columns"
    _truncate(data_dir / "qm9" / "qm9_first10k.csv.gz", root / "qm9_truncated" / "qm9" / "qm9_first10k.csv.gz", 30_000)
    dirs["qm9_truncated"] = root / "qm9_truncated"
    table = pd.read_csv(data_dir / "qm9" / "qm9_first10k.csv.gz", nrows=110)
    for name, value in (("qm9_abc", "abc"), ("qm9_nan", "NaN")):  # the tenth molecule's polarizability
        rows = table.astype({"Polarizability_bohr3": object})
        rows.loc[9, "Polarizability_bohr3"] = value
        (root / name / "qm9").mkdir(parents=True)
        rows.to_csv(root / name / "qm9" / "qm9_first10k.csv", index=False)
        dirs[name] = root / name
    return dirs


def expand(flags: list[str], tmp: Path, data_dir: Path, bad_data: dict) -> list[str]:
    out = []
    for flag in flags:
        if flag.startswith("{yaml:"):
            path = tmp / "config.yaml"
            path.write_bytes(flag[len("{yaml:"):-1].encode("latin-1"))
            flag = str(path)
        elif flag == "{file}":
            (tmp / "a_file").write_text("not a folder\n")
            flag = str(tmp / "a_file")
        elif flag == "{corrupt_checkpoint}":
            folder = tmp / "run"
            folder.mkdir()
            (folder / "checkpoint.pt").write_bytes(b"\x80\x02 truncated")
            flag = str(folder)
        elif flag.startswith("{") and flag[1:-1] in bad_data:
            flag = str(bad_data[flag[1:-1]])
        out.append(flag.replace("{tmp}", str(tmp)).replace("{data}", str(data_dir)))
    return out


def check_one_line(err: str, words: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]


def skip_where_cuda_is_available(words):
    if words == "CUDA is not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid input here")


@pytest.mark.parametrize("script, flags, words", CASES, ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_bad_input_is_one_line_and_exit_2(script, flags, words, tmp_path, data_dir, bad_data, capsys):
    skip_where_cuda_is_available(words)
    argv = expand(flags, tmp_path, data_dir, bad_data)
    out_dir = tmp_path / "run"
    before = sorted(out_dir.rglob("*")) if out_dir.exists() else None
    if "--out_dir" not in argv:
        argv += ["--out_dir", str(out_dir)]
    if "--data_dir" not in argv:
        argv += ["--data_dir", str(data_dir)]
    config_cls, task_cls = TASKS[script]
    code = run(config_cls, task_cls, "", [*FAST, *argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    check_one_line(captured.err, words)
    # nothing (new) in the run folder
    assert (sorted(out_dir.rglob("*")) if out_dir.exists() else None) == before


def test_the_table_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("script, flags, words", [
    ("main.py", ["--lr", "-1"], "lr must be a positive"),
    ("main.py", ["--train_fraction", "0.0001"], "leaves 0 for training"),
    ("main.py", ["--device", "cuda"], "CUDA is not available"),
    ("main_mnist.py", ["--data_dir", "{file}"], "is not a directory"),
    ("main_imdb.py", ["--data_dir", "{imdb_truncated}"], "cannot be read (EOFError"),
    ("main_qm9.py", ["--data_dir", "{file}"], "is not a directory"),
])
def test_real_process_prints_no_traceback(script, flags, words, tmp_path, data_dir, bad_data):
    skip_where_cuda_is_available(words)
    argv = expand(flags, tmp_path, data_dir, bad_data) + ["--out_dir", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, script, *FAST, *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    check_one_line(result.stderr, words)
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()


def test_adam_step_size_beyond_float32_is_refused(tmp_path, capsys, data_dir):
    from repro.cli import run
    from repro.tasks.mnist import MnistConfig, MnistTask
    code = run(MnistConfig, MnistTask, "", ["--lr", "3e38", "--device", "cpu", "--data_dir", str(data_dir),
                                            "--out_dir", str(tmp_path / "run")])
    assert code == 2 and "lr / (1 - beta1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_whose_losses_are_all_nan_still_plots(tmp_path):
    """A log axis needs a finite positive value: without one the axis stays linear (it raised)."""
    import json
    from repro.plots import plot_run
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": float("nan"), "val_loss": float("inf"),
                                                        "val_acc": 0.1}) + "\n")
    assert plot_run(tmp_path).is_file()
