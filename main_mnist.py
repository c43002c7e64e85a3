"""Grokfast on MNIST (the paper's MNIST table): 1000 training images, a 784-200-200-10 MLP with init x8, MSE.

    python main_mnist.py --config configs/mnist/grokfast.yaml   # Grokfast-EMA, alpha 0.8, lamb 0.1, wd 2.0
    python main_mnist.py --config configs/mnist/baseline.yaml   # AdamW, wd 0.01, no filter
"""
import sys

from repro.cli import run
from repro.tasks.mnist import MnistConfig, MnistTask

if __name__ == "__main__":
    sys.exit(run(MnistConfig, MnistTask, __doc__))
