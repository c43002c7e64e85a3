"""MNIST with a large-init MLP, the Omnigrok setup (the paper's MNIST table; the reference's main_mnist.py).

Data: the FIRST `train_points` (1000) training images, the full 10k test set as validation, pixels in
[0, 1] (repro/data/mnist.py). Model: nn.Sequential(Flatten, Linear(784, 200), ReLU, Linear(200, 200),
ReLU, Linear(200, 10)) (`depth` 3, `width` 200; the reference's module names, so state dicts are
interchangeable), default PyTorch init right after torch.manual_seed(seed), then every parameter x8
(`init_scale`). Loss: nn.MSELoss() (mean over all batch x 10 elements) on one-hot targets, or
CrossEntropy. AdamW lr 1e-3, default betas (0.9, 0.999), weight decay 0.01, batch 200, 1e5 updates.

Batches: the reference cycles a DataLoader(Subset, batch_size=200, shuffle=True) (drop_last=False,
a fresh shuffle every epoch; 1000 / 200 = 5 full batches, so drop_last would change nothing). Here
EpochBatches gives the same kind of batches, deterministic in (seed, step). The reference's exact
order is not reproduced: its RandomSampler seeds from the global RNG, which its evaluation loaders
(also shuffle=True) consume too, so its batch order depends on the log grid.

Evaluation (the reference's `do_log`, `log_freq = ceil(optimization_steps / 150)`): the reference
evaluates at the top of its loop, BEFORE the update, when `steps` updates are done:
    steps < 30  or  (steps < 150 and steps % 10 == 0)  or  steps % log_freq == 0
Our `step` (1-based, evaluation after `step` updates) counts the same thing, so step s here is the
reference's log step s (44022 = 66 * 667 and 2001 = 3 * 667 are grid points for budget 1e5). Two
differences: the reference also logs step 0 (the initial model; the engine never evaluates before
the first update), and the engine also evaluates after the last update (the reference never does).
`eval_every` N > 0 adds every N-th step to that grid. The grid spacing follows `budget`, not
`max_steps`, so a capped run evaluates at the same steps as the full run.

Metrics, on all of train (1000) and test (10k), as the reference's compute_loss / compute_accuracy
(which iterate the whole sets when N = len(dataset)): accuracy by argmax; loss = the loss summed
with reduction="sum" divided by the number of images. For MSE that is the squared error summed over
the 10 outputs, averaged over images, i.e. 10x the mean-reduced training objective; this is the
scale of the reference's logged and plotted MSE losses. For CrossEntropy it is the mean CE.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from repro.config import FLOAT32_MAX, Config
from repro.data.mnist import load_mnist
from repro.data.paths import resolve_data_dir
from repro.errors import UserError
from repro.memory import FLOAT, LONG, Footprint
from repro.tasks.base import EpochBatches, Task, scale_parameters_

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}  # the reference's set
LOSS_FUNCTIONS = ("MSE", "CrossEntropy")
N_TRAIN_FULL = 60_000
N_TEST = 10_000  # the test set, the validation split of every run
NUM_CLASSES = 10


@dataclass(frozen=True)
class MnistConfig(Config):
    task: str = "mnist"
    train_points: int = 1000  # the first images of the training set
    depth: int = 3  # Linear layers: 784 -> width -> ... -> width -> 10
    width: int = 200
    activation: str = "ReLU"  # ReLU, Tanh, Sigmoid or GELU (case-insensitive)
    init_scale: float = 8.0  # every initial parameter multiplied by this (Omnigrok's large init)
    loss_function: str = "MSE"  # MSE on one-hot targets, or CrossEntropy
    download: bool = False  # let torchvision download MNIST into <data_dir>/mnist when it is missing
    # the reference's defaults: AdamW(lr 1e-3, default betas 0.9, 0.999), wd 0.01, batch 200, 1e5 steps
    budget: int = 100_000
    batch_size: int = 200
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.01
    optimizer: str = "AdamW"
    warmup_steps: int = 0
    # the reference MNIST script's filter defaults (its argparse), not the grokfast module's
    alpha: float = 0.99
    lamb: float = 5.0
    eval_every: int = 0  # 0 = the reference's log grid only; N > 0 = also every N steps

    ALIASES: ClassVar[dict] = {"optimization_steps": "budget", "initialization_scale": "init_scale",
                               "download_directory": "data_dir"}
    CHOICES: ClassVar[dict] = {"loss_function": LOSS_FUNCTIONS}
    HELP: ClassVar[dict] = {
        "train_points": "training images: the first N of MNIST's 60,000",
        "depth": "Linear layers (>= 2): 784 -> width -> ... -> width -> 10",
        "width": "units per hidden layer",
        "activation": "ReLU, Tanh, Sigmoid or GELU (any case)",
        "init_scale": "every initial parameter multiplied by this (> 0; 8 is Omnigrok's large init)",
        "loss_function": "MSE on one-hot targets, or CrossEntropy",
        "download": "let torchvision download MNIST into <data_dir>/mnist when it is missing",
        "eval_every": "0 = evaluate on the reference's log grid only (about 150 points over --budget); "
                      "N > 0 = also every N steps",
    }

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.train_points <= N_TRAIN_FULL:
            raise UserError(f"invalid config: train_points must be in [1, {N_TRAIN_FULL}]")
        if self.depth < 2:  # the reference's depth 1 is a 784 -> width layer with no 10-way output
            raise UserError("invalid config: depth must be >= 2")
        if self.width < 1:
            raise UserError("invalid config: width must be >= 1")
        if self.activation.lower() not in ACTIVATIONS:
            raise UserError("invalid config: activation must be one of ReLU, Tanh, Sigmoid, GELU")
        if not 0 < self.init_scale <= FLOAT32_MAX:  # beyond it the float32 parameters start infinite
            raise UserError(f"invalid config: init_scale must be a positive number at most {FLOAT32_MAX:.3g}")
        if self.loss_function not in LOSS_FUNCTIONS:
            raise UserError(f"invalid config: loss_function must be one of {', '.join(LOSS_FUNCTIONS)}")
        if self.eval_every < 0:
            raise UserError("invalid config: eval_every must be >= 0")


def make_mlp(depth: int = 3, width: int = 200, activation: str = "ReLU") -> nn.Sequential:
    """The reference's MLP, layer for layer (same module indices: 1, 3, ..., so same state-dict keys)."""
    act = ACTIVATIONS[activation.lower()]
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        if i == 0:
            layers += [nn.Linear(784, width), act()]
        elif i == depth - 1:
            layers.append(nn.Linear(width, NUM_CLASSES))
        else:
            layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers)


def mlp_parameters(depth: int, width: int) -> int:
    """make_mlp(depth, width)'s parameter count, in closed form."""
    return (784 * width + width) + (depth - 2) * (width * width + width) + (width * NUM_CLASSES + NUM_CLASSES)


def reference_log_grid(step: int, budget: int) -> bool:
    """The reference's do_log for `step` updates done (log_freq = ceil(budget / 150))."""
    log_freq = -(-budget // 150)
    return step < 30 or (step < 150 and step % 10 == 0) or step % log_freq == 0


class MnistTask(Task):
    name = "mnist"
    # an MLP on fixed-shape index batches, no dropout, no host sync; evaluation is step-independent
    graph_safe_loss = graph_safe_eval = True
    batch_dim = 0  # a batch is a vector of image indices

    @classmethod
    def footprint(cls, cfg: MnistConfig) -> Footprint:
        """Closed-form sizes for repro.memory (float32 activations; rough)."""
        n_all, width = cfg.train_points + N_TEST, cfg.width
        batch = -(-min(cfg.batch_size, cfg.train_points) // cfg.grad_accum_steps)
        # a step keeps its gathered images and each hidden layer's output and activation, with gradients
        train = FLOAT * batch * (784 + 4 * width * (cfg.depth - 1) + 3 * NUM_CLASSES)
        # evaluation: one forward of both splits, a layer's input and output live at a time
        evaluate = FLOAT * n_all * (3 * width + 4 * NUM_CLASSES)
        # images of both splits twice (apart and concatenated), labels and one-hot targets
        data = 2 * n_all * (784 * FLOAT + LONG + NUM_CLASSES * FLOAT)
        return Footprint(mlp_parameters(cfg.depth, width), data, train, evaluate)

    def __init__(self, cfg: MnistConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        x_train, y_train, x_test, y_test = load_mnist(resolve_data_dir(cfg.data_dir), cfg.train_points,
                                                      cfg.download)
        self.x_train, self.y_train = x_train.to(device), y_train.to(device)
        self.x_test, self.y_test = x_test.to(device), y_test.to(device)
        self.onehot_train = F.one_hot(self.y_train, NUM_CLASSES).float()  # = the reference's eye(10)[labels]
        # one forward evaluates both splits
        self.x_all = torch.cat([self.x_train, self.x_test])
        self.y_all = torch.cat([self.y_train, self.y_test])
        self.onehot_all = F.one_hot(self.y_all, NUM_CLASSES).float()

        torch.manual_seed(cfg.seed)  # model init: the reference's first use of the RNG after seeding
        self.model = make_mlp(cfg.depth, cfg.width, cfg.activation).to(device)
        scale_parameters_(self.model, cfg.init_scale)
        self.batches = EpochBatches(len(self.y_train), cfg.batch_size, cfg.seed, device)

    # ---- training -----------------------------------------------------------------------------
    def train_batch(self, step: int) -> torch.Tensor:
        """Indices into the training images (one tensor, as the engine's CUDA graphs need)."""
        return self.batches(step)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.x_train[batch])
        if self.cfg.loss_function == "MSE":
            return F.mse_loss(logits, self.onehot_train[batch])  # nn.MSELoss(): mean over batch x 10
        return F.cross_entropy(logits, self.y_train[batch])

    # ---- evaluation ---------------------------------------------------------------------------
    def is_eval_step(self, step: int) -> bool:
        every = self.cfg.eval_every
        return reference_log_grid(step, self.cfg.budget) or (every > 0 and step % every == 0)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()  # no dropout / norm layers: the same numbers as the reference's train mode
        logits = self.model(self.x_all)
        self.model.train(was_training)
        if self.cfg.loss_function == "MSE":
            losses = (logits - self.onehot_all).square().sum(dim=1)  # reduction="sum" / points
        else:
            losses = F.cross_entropy(logits, self.y_all, reduction="none")
        correct = (logits.argmax(dim=1) == self.y_all).float()
        n = len(self.y_train)
        return {
            "train_loss": losses[:n].mean(), "train_acc": correct[:n].mean(),
            "val_loss": losses[n:].mean(), "val_acc": correct[n:].mean(),
        }

    def table_metrics(self, records: list[dict]) -> dict:
        """Beside the common steps_to_85/90/95: the best training accuracy and the first step at which
        the training set is fitted completely (the start of the grokking delay)."""
        train = [r["train_acc"] for r in records if isinstance(r.get("train_acc"), (int, float))]
        fitted = next((r["step"] for r in records if r.get("train_acc", 0.0) >= 1.0), None)
        return {"best_train_acc": max(train) if train else None, "steps_to_train_100": fitted}

    def run_name_part(self) -> str:
        cfg = self.cfg
        part = f"mnist_n{cfg.train_points}_{cfg.loss_function.lower()}_init{cfg.init_scale:g}"
        if (cfg.depth, cfg.width) != (3, 200):
            part += f"_d{cfg.depth}w{cfg.width}"
        if cfg.activation.lower() != "relu":
            part += f"_{cfg.activation.lower()}"
        return part


CONFIG = MnistConfig
TASK = MnistTask
