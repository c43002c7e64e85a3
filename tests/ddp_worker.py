"""Run by tests/test_ddp.py under torchrun (not a test itself): trains the modular task once per flag
list in <out>/runs.json, saving this rank's parameters and filter state after each. (The flags travel
in a file: torchrun's own parser would take `--p` for an abbreviation of one of its options.)"""
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro import distributed  # noqa: E402
from repro.config import load_config  # noqa: E402
from repro.engine import Trainer  # noqa: E402
from repro.tasks.modular import ModularConfig, ModularTask  # noqa: E402


def main(out: Path) -> None:
    rank = os.environ["RANK"]
    # a hung rank, stopped by the test's SIGTERM (torchrun passes it on), prints where it waited
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    for i, flags in enumerate(json.loads((out / "runs.json").read_text())):
        cfg = load_config(ModularConfig, flags + ["--out_dir", str(out / f"run{i}")])
        trainer = Trainer(cfg, ModularTask)
        trainer.run()
        torch.save({"model": trainer.runner.model.state_dict(), "filter": trainer.runner.filter.state_dict()["state"],
                    "world_size": trainer.dist.world_size}, out / f"run{i}_rank{rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
