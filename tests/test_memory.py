"""Memory estimates (repro/memory.py): the closed-form parameter counts equal the real models', the state
of each optimizer and filter is counted, and absurd sizes stop at once with one line and exit 2, before
anything is allocated or written."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro import memory
from repro.cli import run
from repro.config import load_config
from repro.errors import UserError
from repro.tasks.imdb import ImdbConfig, ImdbTask, SentimentLSTM
from repro.tasks.mnist import MnistConfig, MnistTask, make_mlp
from repro.tasks.modular import Decoder, ModularConfig, ModularTask
from repro.tasks.qm9 import Qm9Config, Qm9Net, Qm9Task, qm9net_parameters

REPO = Path(__file__).resolve().parents[1]
TASKS = {"main.py": (ModularConfig, ModularTask), "main_mnist.py": (MnistConfig, MnistTask),
         "main_imdb.py": (ImdbConfig, ImdbTask), "main_qm9.py": (Qm9Config, Qm9Task)}
FAST = ["--device", "cpu", "--progress", "false", "--max_steps", "1"]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dim, layers, heads, p", [(128, 2, 4, 97), (32, 1, 2, 23), (64, 3, 8, 11), (8, 5, 1, 1009)])
def test_modular_parameter_count_is_the_models(dim, layers, heads, p):
    cfg = load_config(ModularConfig, ["--dim", str(dim), "--num_layers", str(layers), "--num_heads", str(heads),
                                      "--p", str(p)])
    assert ModularTask.footprint(cfg).params == count(Decoder(dim, layers, heads, num_tokens=p + 2, seq_len=5))


@pytest.mark.parametrize("depth, width", [(3, 200), (2, 1), (5, 17), (2, 50)])
def test_mnist_parameter_count_is_the_models(depth, width):
    cfg = load_config(MnistConfig, ["--depth", str(depth), "--width", str(width)])
    assert MnistTask.footprint(cfg).params == count(make_mlp(depth, width))


@pytest.mark.parametrize("vocab, emb, hidden, layers", [(1000, 64, 256, 2), (4, 3, 7, 1), (99, 8, 16, 4)])
def test_imdb_parameter_count_is_the_models(vocab, emb, hidden, layers):
    cfg = load_config(ImdbConfig, ["--vocab_size", str(vocab), "--embedding_dim", str(emb), "--hidden_dim",
                                   str(hidden), "--num_layers", str(layers)])
    assert ImdbTask.footprint(cfg).params == count(SentimentLSTM(vocab + 1, emb, hidden, layers))


def test_imdb_default_parameter_count_is_the_real_tasks(data_dir):
    """On the real data the vocabulary fills its 1000 words, so the count is exact, not just a bound."""
    cfg = load_config(ImdbConfig, ["--data_dir", str(data_dir), "--device", "cpu"])
    assert ImdbTask.footprint(cfg).params == count(ImdbTask(cfg, torch.device("cpu")).model)


@pytest.mark.parametrize("fast_conv", ["true", "false"])
def test_qm9_parameter_count_is_the_models(fast_conv):
    cfg = load_config(Qm9Config, ["--fast_conv", fast_conv])
    assert Qm9Task.footprint(cfg).params == count(Qm9Net(fast_conv=fast_conv == "true")) == 30321
    assert qm9net_parameters(5, 3) == count(Qm9Net(5, 3))


@pytest.mark.parametrize("flags, optimizer, filter_state", [
    (["--optimizer", "Adam"], 2, 0),
    (["--optimizer", "AdamW", "--filter", "ema"], 2, 1),
    (["--optimizer", "SGD", "--momentum", "0.9"], 1, 0),
    (["--optimizer", "SGD", "--filter", "ma", "--window_size", "7"], 0, 8),  # the ring and its running sum
])
def test_optimizer_and_filter_state_are_counted(flags, optimizer, filter_state):
    parts = memory.breakdown(load_config(ModularConfig, flags), ModularTask)
    assert parts["gradients"] == parts["parameters"] == 4 * ModularTask.footprint(load_config(ModularConfig, [])).params
    assert parts["optimizer state"] == optimizer * parts["parameters"]
    assert parts["filter state"] == filter_state * parts["parameters"]


@pytest.mark.parametrize("config_cls, task_cls", TASKS.values(), ids=TASKS)
def test_default_runs_are_estimated_well_below_an_ordinary_machine(config_cls, task_cls):
    """The estimate must not refuse ordinary runs: each task's defaults need well under 4 GiB."""
    assert memory.estimate_bytes(load_config(config_cls, []), task_cls, "cpu") < 4 * 2**30
    assert memory.estimate_bytes(load_config(config_cls, []), task_cls, "cuda") < 4 * 2**30


def test_the_estimate_is_instant_for_any_size():
    cfg = load_config(ModularConfig, ["--num_layers", str(10**30), "--dim", str(4 * 10**20), "--p", str(10**40 + 1)])
    start = time.perf_counter()
    needed = memory.estimate_bytes(cfg, ModularTask, "cpu")
    assert time.perf_counter() - start < 0.05 and needed > 10**80


def test_refuses_what_does_not_fit_and_passes_what_does(monkeypatch):
    cfg = load_config(ModularConfig, ["--filter", "ma", "--window_size", "2000", "--device", "cpu"])  # ~3.4 GB
    monkeypatch.setattr(memory, "available_bytes", lambda *a: 2 * 2**30)
    with pytest.raises(UserError) as info:
        memory.check_fits(cfg, ModularTask)
    message = str(info.value)
    assert "needs about 3.8 GiB of memory on cpu (filter state 3.15 GiB" in message
    assert "4.23e+05 parameters), but only 2 GiB is available" in message
    monkeypatch.setattr(memory, "available_bytes", lambda *a: 5 * 2**30)
    memory.check_fits(cfg, ModularTask)


def test_data_parallel_ranks_on_one_host_share_its_memory(monkeypatch):
    cfg = load_config(ModularConfig, ["--filter", "ma", "--window_size", "2000", "--device", "cpu"])
    monkeypatch.setattr(memory, "available_bytes", lambda *a: 5 * 2**30)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="needs about 7.59 GiB"):
        memory.check_fits(cfg, ModularTask)


def test_a_malformed_torchrun_variable_is_no_traceback(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    memory.check_fits(load_config(ModularConfig, ["--device", "cpu"]), ModularTask)


def test_free_memory_is_read():
    assert 0 < memory.available_bytes("cpu") < 2**60


def test_device_resolution_without_cuda(monkeypatch):
    """'auto' is the CPU there; an unusable CUDA device is left to the engine's own error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory.resolve_device_name("auto") == ("cpu", None)
    assert memory.resolve_device_name("cuda:1") is None


# the commands, and the window from a YAML file
ABSURD = [
    ("main.py", ["--p", "1000003"]),
    ("main.py", ["--window_size", "100000000", "--filter", "ma"]),
    ("main.py", ["--config", "{yaml}"]),
    ("main.py", ["--dim", "1000000"]),
    ("main.py", ["--num_layers", "1000000"]),
    ("main.py", ["--num_layers", "1e308"]),  # an int beyond a float's range
    ("main_imdb.py", ["--seq_len", "1000000000"]),
    ("main_imdb.py", ["--hidden_dim", "1000000"]),
    ("main_mnist.py", ["--width", "10000000"]),
]


@pytest.mark.parametrize("script, flags", ABSURD, ids=[f"{s}:{' '.join(f)}" for s, f in ABSURD])
def test_absurd_sizes_stop_at_once_with_one_line(script, flags, tmp_path, data_dir, capsys):
    config = tmp_path / "ma.yaml"
    config.write_text("filter: ma\nwindow_size: 100000000\n")
    argv = [*FAST, *(str(config) if f == "{yaml}" else f for f in flags), "--out_dir", str(tmp_path / "run"),
            "--data_dir", str(data_dir)]
    start = time.perf_counter()
    code = run(*TASKS[script], "", argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: this run needs about ") and "is available" in err
    assert elapsed < 5, elapsed
    assert not (tmp_path / "run").exists()


def test_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "main.py", *FAST, "--num_layers", "1000000", "--out_dir",
                             str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "needs about" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_high_pass_filter_counts_one_ema_state():
    from repro.config import load_config
    from repro.tasks.modular import ModularConfig, ModularTask
    ema, highpass = (memory.estimate_bytes(load_config(ModularConfig, ["--filter", kind, "--device", "cpu"]), ModularTask)
                     for kind in ("ema", "ema_highpass"))
    assert ema == highpass > memory.estimate_bytes(load_config(ModularConfig, ["--device", "cpu"]), ModularTask)
