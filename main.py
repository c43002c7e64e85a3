"""Grokfast on modular arithmetic (the paper's tables 1-2): x * y mod 97 with a 2-layer transformer.

    python main.py --config configs/modular/ema.yaml          # Grokfast-EMA, alpha 0.98, lamb 2, wd 0.005
    python main.py --filter ma --window_size 100 --lamb 5 --weight_decay 0.01
"""
import sys

from repro.cli import run
from repro.tasks.modular import ModularConfig, ModularTask

if __name__ == "__main__":
    sys.exit(run(ModularConfig, ModularTask, __doc__))
