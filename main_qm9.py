"""Grokfast on QM9 (the paper's QM9 table): polarizability of the first 100 molecules with an NNConv GNN.

    python main_qm9.py --config configs/qm9/grokfast.yaml     # Grokfast-EMA, alpha 0.9, lamb 1, wd 0.01
    python main_qm9.py --config configs/qm9/baseline.yaml     # AdamW, wd 0, no filter
    python main_qm9.py --size 100 --init_scale 3.0 --filter ema --alpha 0.9 --lamb 1.0 --weight_decay 0.01

--budget is the number of updates; the default (0) is the reference's 100*50000/size epochs of
ceil((size // 2) / batch_size) updates: 100,000 updates for 100 molecules.
"""
import sys

from repro.cli import run
from repro.tasks.qm9 import Qm9Config, Qm9Task

if __name__ == "__main__":
    sys.exit(run(Qm9Config, Qm9Task, __doc__))
