"""Data parallelism: under torchrun (2 processes, gloo, CPU) the filter runs on the all-reduced
gradients, so both ranks hold the same parameters and filter state, equal to one process training
on the same global batches."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.config import load_config
from repro.engine import Trainer
from repro.errors import UserError
from repro.tasks.modular import ModularConfig, ModularTask

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = ["--p", "23", "--batch_size", "64", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
          "--device", "cpu", "--progress", "false", "--filter", "ema", "--alpha", "0.9", "--lamb", "2",
          "--max_steps", "5", "--eval_every", "2", "--log_every_evals", "1", "--warmup_steps", "0"]
# SGD for the comparison with one process: Adam's update g / sqrt(v) turns the rounding difference of a
# near-zero gradient entry into a step of size lr, so two correct runs differ by ~lr there
SGD = ["--optimizer", "SGD", "--lr", "0.1", "--momentum", "0.9"]
ADAM = ["--optimizer", "Adam", "--lr", "1e-3", "--grad_accum_steps", "2", "--clip_grad_norm", "0.5"]
# both runs take ~10 s alone, ~50 s beside 6 busy processes and ~105 s beside 14 on 2 cores; the
# limit only has to catch a hang (whose ranks then print their stacks, see ddp_worker.py)
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    (out / "runs.json").write_text(json.dumps([COMMON + SGD, COMMON + ADAM]))
    # --standalone: the rendezvous store listens on a port the OS picks (no fixed port that another run
    # on the machine could hold); one thread per rank, so the 2 ranks do not oversubscribe 2 cores
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "tests/ddp_worker.py", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the output goes to files, not pipes: all of it can be read even when the run has to be stopped
    with (out / "torchrun.out").open("w") as stdout, (out / "torchrun.err").open("w") as stderr:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            proc.wait(timeout=TIMEOUT_S)
            failure = (f"exited with status {proc.returncode} after {time.monotonic() - start:.0f} s"
                       if proc.returncode else None)
        except subprocess.TimeoutExpired:
            failure = f"was still running after {TIMEOUT_S} s (the ranks' stacks are in its stderr)"
        finally:  # also on Ctrl-C
            stop(proc)
    if failure:
        pytest.fail(f"torchrun {failure}: {' '.join(cmd)}\n"
                    f"----- stdout -----\n{(out / 'torchrun.out').read_text().rstrip() or '(empty)'}\n"
                    f"----- stderr -----\n{(out / 'torchrun.err').read_text().rstrip() or '(empty)'}",
                    pytrace=False)
    return out


def stop(proc: subprocess.Popen) -> None:
    """Stop torchrun if it still runs. SIGTERM, not SIGKILL: torchrun then stops its ranks (each in a
    session of its own, SIGKILL after 30 s), where a killed torchrun would leave them running."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(out, run, rank):
    return torch.load(out / f"run{run}_rank{rank}.pt", weights_only=False)


@pytest.mark.parametrize("run", [0, 1])
def test_ranks_hold_identical_parameters_and_filter_state(ddp_runs, run):
    a, b = load(ddp_runs, run, 0), load(ddp_runs, run, 1)
    assert a["world_size"] == 2
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["filter"].keys() == b["filter"].keys() and len(a["filter"]) > 0
    for name in a["filter"]:
        assert torch.equal(a["filter"][name]["ema"], b["filter"][name]["ema"]), name


def test_equals_one_process_on_the_global_batch(ddp_runs, tmp_path):
    cfg = load_config(ModularConfig, [*COMMON, *SGD, "--out_dir", str(tmp_path / "single")])
    single = Trainer(cfg, ModularTask)
    single.run()
    ddp = load(ddp_runs, 0, 0)
    for name, value in single.runner.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=1e-6)
    for name, st in single.runner.filter.state.items():
        torch.testing.assert_close(ddp["filter"][name]["ema"], st["ema"], rtol=0, atol=1e-6)
    # rank 0 alone wrote the run folder: the same evaluations, once each
    records = [json.loads(line) for line in (ddp_runs / "run0" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [r["step"] for r in expected] == [2, 4, 5]
    for r, e in zip(records, expected):  # training metrics: both ranks' batch sums, all-reduced
        for key in ("val_loss", "train_loss", "train_acc"):
            assert r[key] == pytest.approx(e[key], rel=1e-5), (r["step"], key)
    assert (ddp_runs / "run0" / "checkpoint.pt").exists() and (ddp_runs / "run0" / "summary.json").exists()


def test_a_run_on_a_named_gpu_makes_it_the_current_one(monkeypatch):
    """`--device cuda:1` outside torchrun (a solo run through setup, a population through resolve_device):
    graph capture and the epoch batches' side stream create their streams on the current GPU, so the named
    one must become current (the check runs without a GPU)."""
    from repro import distributed
    made_current = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", made_current.append)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 3)
    assert distributed.setup("cuda:1") == (distributed.torch.device("cuda", 1), None)
    assert made_current == [distributed.torch.device("cuda", 1)]
    made_current.clear()
    assert distributed.resolve_device("cuda:2") == distributed.torch.device("cuda", 2)
    assert made_current == [distributed.torch.device("cuda", 2)]
    made_current.clear()
    distributed.setup("cuda")  # no index: the current GPU stays as it is
    assert made_current == []
    with pytest.raises(UserError, match="this machine has 3 CUDA device"):
        distributed.resolve_device("cuda:3")
