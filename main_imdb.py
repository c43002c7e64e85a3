"""Grokfast on IMDb sentiment (the paper's IMDb table): a 2-layer LSTM on the first 1000 reviews.

    python main_imdb.py --config configs/imdb/grokfast.yaml     # Grokfast-EMA, alpha 0.98, lamb 2, wd 10
    python main_imdb.py --config configs/imdb/baseline.yaml     # AdamW, wd 1.0, no filter
    python main_imdb.py --iterations 10000 --init_scale 6.0 --gradient_clip 5.0   # reference flag names
"""
import sys

from repro.cli import run
from repro.tasks.imdb import ImdbConfig, ImdbTask

if __name__ == "__main__":
    sys.exit(run(ImdbConfig, ImdbTask, __doc__))
