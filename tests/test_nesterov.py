"""SGD with Nesterov momentum (issue 21 Q3): the config option, a solo run against torch.optim.SGD's own
Nesterov update, and a population member against its solo run."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro.cli import run
from repro.config import load_config, run_name
from repro.errors import UserError
from repro.tasks.modular import ModularConfig, ModularTask

SMALL = ["--p", "23", "--batch_size", "64", "--dim", "32", "--num_heads", "2", "--num_layers", "1",
         "--device", "cpu", "--progress", "false", "--optimizer", "SGD", "--lr", "0.05", "--warmup_steps", "0"]


@pytest.mark.parametrize("flags", [["--nesterov"], ["--nesterov", "--optimizer", "SGD"],
                                   ["--nesterov", "--momentum", "0.9"]])
def test_nesterov_needs_sgd_with_momentum(flags):
    with pytest.raises(UserError, match="nesterov needs optimizer SGD and momentum > 0"):
        load_config(ModularConfig, flags)


def test_nesterov_runs_get_their_own_folder_name():
    plain = load_config(ModularConfig, ["--optimizer", "SGD", "--momentum", "0.9"])
    nesterov = load_config(ModularConfig, ["--optimizer", "SGD", "--momentum", "0.9", "--nesterov", "true"])
    assert run_name(plain, "p") == "p_none_sgd_lr0.001_wd0_m0.9_s0"
    assert run_name(nesterov, "p") == "p_none_sgd_lr0.001_wd0_m0.9_nest_s0"


def test_a_nesterov_run_follows_torch_sgd_with_nesterov(tmp_path):
    """The engine's first 8 updates equal a plain loop of torch.optim.SGD(nesterov=True) on the same batches
    (heavy-ball momentum ends elsewhere: the check tells them apart)."""
    from repro.engine import Trainer

    cfg = load_config(ModularConfig, [*SMALL, "--momentum", "0.9", "--nesterov", "--weight_decay", "0.01",
                                      "--max_steps", "8", "--out_dir", str(tmp_path / "run")])
    trainer = Trainer(cfg, ModularTask)
    start = copy.deepcopy(trainer.runner.model)
    trainer.run()

    def plain_loop(nesterov: bool) -> list[torch.Tensor]:
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=nesterov)
        for step in range(8):
            batch = trainer.task.train_data[:, trainer.task.train_batch(step)]
            optimizer.zero_grad()
            F.cross_entropy(model(batch[:4]), batch[4]).backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    engine = [p.detach() for p in trainer.runner.model.parameters()]
    for got, want in zip(engine, plain_loop(nesterov=True)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got, want, rtol=1e-5, atol=1e-6) for got, want in zip(engine, plain_loop(False)))


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_nesterov_member_follows_its_solo_run(tmp_path):
    """A population of two Nesterov members (other momentum, lr and weight decay) logs its solo runs' metrics
    over 50 steps, to 1e-4: the population's batched matmuls round differently from a solo run's (one step's
    gradients agree to 2e-7, see test_modular_stacked), and member 0's loss climbs (lr 0.05 with momentum 0.9),
    which amplifies that (1.1e-5 measured at step 40). The base flags must be valid on their own, hence a
    momentum there too."""
    flags = [*SMALL, "--nesterov", "true", "--momentum", "0.5", "--budget", "50", "--filter", "ema"]
    members = [{"seed": 0, "momentum": 0.9}, {"seed": 1, "momentum": 0.98, "lr": 0.02, "weight_decay": 0.01}]
    listing = tmp_path / "members.yaml"
    listing.write_text("".join(f"- {json.dumps(m)}\n" for m in members))
    assert run(ModularConfig, ModularTask, "", [*flags, "--population", str(listing),
                                                "--results_dir", str(tmp_path / "pop")]) == 0
    for member in members:
        solo = [f"--{k}={v}" for k, v in member.items()]
        assert run(ModularConfig, ModularTask, "", [*flags, *solo, "--results_dir", str(tmp_path / "solo")]) == 0
    pop, solo = (sorted((tmp_path / kind / "modular").iterdir()) for kind in ("pop", "solo"))
    assert [p.name for p in pop] == [s.name for s in solo] and all("_nest_" in p.name for p in pop)
    for p, s in zip(pop, solo):
        a, b = records(p), records(s)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a[-1]["step"] == 50
        for x, y in zip(a, b):
            for key in x.keys() - {"elapsed_s"}:
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), (p.name, x["step"], key)
