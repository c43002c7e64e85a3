"""configs/modular/quick.yaml, the README's first command: table 2's Grokfast-EMA row that stops soon
after it groks, the budget and everything else as the full row."""
from pathlib import Path

from repro.config import load_config
from repro.tasks.modular import ModularConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "modular"


def test_quick_is_the_ema_row_plus_an_early_stop():
    quick = load_config(ModularConfig, ["--config", str(CONFIGS / "quick.yaml")]).to_dict()
    row = load_config(ModularConfig, ["--config", str(CONFIGS / "ema.yaml")]).to_dict()
    differs = {k: (row[k], quick[k]) for k in row if row[k] != quick[k]}
    assert differs == {"early_stop_acc": (0.0, 0.95), "early_stop_patience": (0, 10)}
    assert quick["budget"] == 300_000  # the early stop ends it, not a shorter budget
