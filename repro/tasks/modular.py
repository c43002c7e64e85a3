"""Modular arithmetic x ∘ y mod p with a 2-layer decoder-only transformer (the paper's tables 1-2).

Data: every pair x in [0, p), y in [1, p) (9312 equations for p = 97), tokens [x, op, y, eq],
answer c at the last position; a random split (train_fraction of the pairs train, the rest val).

Operations (--operation), the binary operations of Power et al. (2022), every answer reduced mod p:
    mul         x * y               (the paper's tables 1-2; the reference's code)
    add         x + y
    sub         x - y
    div         x / y = x * y^(p-2)  (Fermat's inverse of y; p prime)
    sq_sum      x^2 + y^2
    quad        x^2 + x*y + y^2
    cube_xy     x^3 + x*y
    cube_xy2_y  x^3 + x*y^2 + y
Pairs: Power et al. take 0 <= x, y < p, except 0 < y for division; here every operation uses the
reference's pairs for mul / div, x in [0, p), y in [1, p), so all share the same p(p-1) equations, split
and epoch length (y = 0 drops p of the paper's p^2 equations, 1%, for the operations other than div).

Metrics, as the reference's: `val_loss` / `val_acc` over the whole validation split after each epoch
(every `eval_every` updates); `train_loss` / `train_acc` the mean over the training batches of the
updates since the previous evaluation (an epoch), each taken from the forward of its own update
(before that update), weighted by batch size (the epoch's last batch is smaller). So they cost no
extra forward: re-evaluating the 4656 training equations after each epoch took about a fifth of a
run's FLOPs. A run also evaluates after its last update, so the end of a `--max_steps` segment
splits an epoch's training metrics in two; a checkpoint carries the updates since the last evaluation
(one saved before acdfd10 carries none: a run resumed from it mid-epoch logs a partial epoch first).
"""
import contextlib
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from repro.config import Config
from repro.errors import UserError
from repro.memory import FLOAT, LONG, Footprint
from repro.tasks.base import EpochBatches, Task
from repro.tasks.modular_stacked import stacked_decoder_logits

OPERATIONS = ("mul", "add", "sub", "div", "sq_sum", "quad", "cube_xy", "cube_xy2_y")


@dataclass(frozen=True)
class ModularConfig(Config):
    task: str = "modular"
    p: int = 97
    operation: str = "mul"  # the reference's docstring says x/y, its code multiplies
    train_fraction: float = 0.5
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    # Adam(β 0.9, 0.98), lr 1e-3, 10 warm-up updates, batch 512, 3e5 steps: the reference defaults
    budget: int = 300_000
    batch_size: int = 512
    warmup_steps: int = 10
    eval_every: int = 0  # 0 = once per epoch (every ceil(train size / batch) steps), as the reference

    CHOICES: ClassVar[dict] = {"operation": OPERATIONS}
    HELP: ClassVar[dict] = {
        "p": "the modulus, a prime >= 3",
        "operation": "x o y mod p: mul x*y, add x+y, sub x-y, div x/y, sq_sum x^2+y^2, quad x^2+xy+y^2, "
                     "cube_xy x^3+xy, cube_xy2_y x^3+xy^2+y (Power et al. 2022; the paper's tables: mul)",
        "train_fraction": "fraction of the p*(p-1) equations used for training, in (0, 1); the rest validate",
        "dim": "transformer width (a multiple of --num_heads)",
        "num_layers": "transformer blocks",
        "num_heads": "attention heads",
        "eval_every": "steps between evaluations; 0 = once per epoch, ceil(training equations / batch_size) "
                      "steps (10 for p 97), as the reference",
    }

    def validate(self) -> None:
        super().validate()
        if self.p < 3:
            raise UserError("invalid config: p must be >= 3")
        if self.operation not in OPERATIONS:
            raise UserError(f"invalid config: operation must be one of {', '.join(OPERATIONS)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise UserError("invalid config: train_fraction must be in (0, 1)")
        n, n_train = split_sizes(self.p, self.train_fraction)
        if not 0 < n_train < n:  # an empty split would train on nothing or validate on nothing
            raise UserError(f"invalid config: train_fraction {self.train_fraction:g} of the {n} equations "
                            f"(p={self.p}) leaves {n_train} for training and {n - n_train} for validation; "
                            f"both need at least one")
        if self.dim < 1 or self.num_layers < 1 or self.num_heads < 1 or self.dim % self.num_heads:
            raise UserError("invalid config: dim must be a positive multiple of num_heads")
        if self.eval_every < 0:
            raise UserError("invalid config: eval_every must be >= 0")


def split_sizes(p: int, train_fraction: float) -> tuple[int, int]:
    """(equations, training equations) of the task: ModularTask's split, without building it."""
    n = p * (p - 1)
    if n >= 2**53:  # beyond float's integers (and its range, for a huge p): exact, as no run gets this far
        return n, int(Fraction(train_fraction) * n)
    return n, int(train_fraction * n)


def modular_equations(p: int, operation: str) -> torch.Tensor:
    """(4 + 1, N) long tensor: rows x, op, y, eq, answer; N = p * (p - 1)."""
    eq_token, op_token = p, p + 1
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    if operation == "mul":
        answer = x * y % p
    elif operation == "add":
        answer = (x + y) % p
    elif operation == "sub":
        answer = (x - y) % p
    elif operation == "div":  # x / y = x * y^(p-2) mod p (Fermat; p prime)
        answer = x * torch.tensor([pow(int(v), p - 2, p) for v in y]) % p
    else:  # polynomials, each product reduced mod p so that no intermediate exceeds p^2
        xx, xy = x * x % p, x * y % p
        if operation == "sq_sum":
            answer = (xx + y * y % p) % p
        elif operation == "quad":
            answer = (xx + xy + y * y % p) % p
        elif operation == "cube_xy":
            answer = (xx * x % p + xy) % p
        elif operation == "cube_xy2_y":
            answer = (xx * x % p + xy * y % p + y) % p
        else:
            raise ValueError(f"unknown operation {operation!r}")
    return torch.stack([x, torch.full_like(x, op_token), y, torch.full_like(x, eq_token), answer])


class Block(nn.Module):
    """Transformer block exactly as the reference writes it.

    Note the reference's quirk, kept so results are comparable: the attention residual adds to the
    *normalised* input (x = ln_1(x); x = x + attn(x)), not to the block's input.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
        """last_only: the output at the last position only, (1, batch, dim). Its query attends to every
        position, so it needs no mask; keys and values still come from the whole sequence."""
        x = self.ln_1(x)
        query = x[-1:] if last_only else x
        a, _ = self.attn(query, x, x, attn_mask=None if last_only else attn_mask, need_weights=False)
        x = query + a
        return x + self.mlp(self.ln_2(x))


def decoder_parameters(dim: int, num_layers: int, num_tokens: int, seq_len: int) -> int:
    """Decoder(dim, num_layers, num_heads, num_tokens, seq_len)'s parameter count, in closed form."""
    block = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + (8 * dim * dim + 5 * dim)
    return num_tokens * dim + seq_len * dim + num_layers * block + 2 * dim + dim * num_tokens


class Decoder(nn.Module):
    """Decoder-only causal transformer; input and output are sequence-first (seq, batch)."""

    def __init__(self, dim=128, num_layers=2, num_heads=4, num_tokens=99, seq_len=5):
        super().__init__()
        self.token_embeddings = nn.Embedding(num_tokens, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.layers = nn.ModuleList([Block(dim, num_heads) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_tokens, bias=False)
        self.register_buffer("positions", torch.arange(seq_len), persistent=False)

    def forward(self, tokens: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """Logits of the answer, (batch, vocab): the reference computes the head at every position and
        keeps the last, and only the last position of the last block reaches it, so that block computes
        its queries, MLP and head for that position alone (a third fewer FLOPs, same function).
        all_positions=True gives the reference's full (seq, batch, vocab) output."""
        seq_len = tokens.shape[0]
        h = self.token_embeddings(tokens) + self.position_embeddings(self.positions[:seq_len])[:, None, :]
        # float causal mask (-inf above the diagonal), as the reference builds it
        mask = torch.full((seq_len, seq_len), float("-inf"), device=tokens.device, dtype=h.dtype).triu(1)
        # attention over 4 positions on a GPU: the plain (math) kernels, not the memory-efficient one,
        # whose 64-row tiles are mostly empty here (on an H100 it took a third of a step and half of an
        # evaluation); the CPU keeps torch's choice
        with sdpa_kernel(SDPBackend.MATH) if tokens.is_cuda else contextlib.nullcontext():
            for i, layer in enumerate(self.layers):
                h = layer(h, mask, last_only=not all_positions and i == len(self.layers) - 1)
        logits = self.head(self.ln_f(h))
        return logits if all_positions else logits[-1]


class ModularTask(Task):
    name = "modular"
    graph_safe_loss = graph_safe_eval = True
    batch_dim = 0  # a batch is a vector of indices into the training equations
    population_native = True  # population_loss_and_sums / population_evaluate below

    @classmethod
    def footprint(cls, cfg: ModularConfig) -> Footprint:
        """Closed-form sizes for repro.memory: every activation counted per position is float32."""
        n, n_train = split_sizes(cfg.p, cfg.train_fraction)
        n_val, vocab, dim, layers = n - n_train, cfg.p + 2, cfg.dim, cfg.num_layers
        batch = -(-min(cfg.batch_size, n_train) // cfg.grad_accum_steps)
        # a training step keeps ~18 dim-wide tensors per position and layer for backward (layer norms,
        # q, k, v, attention, MLP 4*dim twice), the attention weights and the logits with their gradient
        train = FLOAT * (5 * batch * (dim * (18 * layers + 4) + 5 * cfg.num_heads * layers) + 3 * batch * vocab)
        # evaluation: the whole validation split in one forward, one layer's tensors live at a time
        evaluate = FLOAT * (5 * n_val * (12 * dim + 5 * cfg.num_heads) + 2 * n_val * vocab)
        # the equation table and its train / validation copies (the table is freed after the split)
        data = 2 * 5 * n * LONG
        return Footprint(decoder_parameters(dim, layers, vocab, 5), data, train, evaluate)

    def __init__(self, cfg: ModularConfig, device: torch.device):
        self.cfg = cfg
        split_generator = torch.Generator().manual_seed(cfg.seed)
        data = modular_equations(cfg.p, cfg.operation)
        order = torch.randperm(data.shape[1], generator=split_generator)
        n_train = split_sizes(cfg.p, cfg.train_fraction)[1]
        self.train_data = data[:, order[:n_train]].to(device)
        self.val_data = data[:, order[n_train:]].to(device)

        torch.manual_seed(cfg.seed)  # model init
        self.model = Decoder(cfg.dim, cfg.num_layers, cfg.num_heads, num_tokens=cfg.p + 2, seq_len=5).to(device)
        self.batches = EpochBatches(n_train, cfg.batch_size, cfg.seed, device)
        self.eval_every = cfg.eval_every or self.batches.batches_per_epoch

    def train_batch(self, step: int) -> torch.Tensor:
        """Indices into the training equations (the rows are gathered in the loss, inside a CUDA graph)."""
        return self.batches(step)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_and_sums(batch)[0]

    def loss_and_sums(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, [summed loss, correct answers, batch size]) of the answers."""
        rows = self.train_data[:, batch]
        logits = self.model(rows[:4])
        loss = F.cross_entropy(logits, rows[4])
        n = rows.shape[1]
        correct = (logits.detach().argmax(-1) == rows[4]).sum()
        return loss, torch.stack([loss.detach() * n, correct.to(loss.dtype), loss.new_full((), n)])

    def train_metrics(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2]}

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every == 0

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        logits = self.model(self.val_data[:4])
        self.model.train(was_training)
        target = self.val_data[4]
        return {"val_loss": F.cross_entropy(logits, target), "val_acc": (logits.argmax(-1) == target).float().mean()}

    def run_name_part(self) -> str:
        return f"{self.cfg.operation}{self.cfg.p}"

    # ---- a population's calls: every member at once (repro/population.py) ---------------------------
    def population_loss_and_sums(self, params: dict, data: dict, batch: torch.Tensor):
        """loss_and_sums of every member: losses [M] and sums [M, 3]; batch [M, B] (each member's indices)."""
        train = data["train_data"]  # [M, 5, n_train]
        rows = torch.gather(train, 2, batch[:, None, :].expand(-1, train.shape[1], -1))  # [M, 5, B]
        logits = stacked_decoder_logits(params, rows[:, :4], self.cfg.num_heads)  # [M, B, vocab]
        losses, correct = _member_losses(logits, rows[:, 4])
        n = rows.shape[2]
        sums = [losses.detach() * n, correct.sum(1).to(losses.dtype), losses.new_full(losses.shape, n)]
        return losses, torch.stack(sums, 1)

    @torch.no_grad()
    def population_evaluate(self, params: dict, data: dict, step: int) -> dict[str, torch.Tensor]:
        """evaluate() of every member: {metric: [M]}."""
        val = data["val_data"]
        losses, correct = _member_losses(stacked_decoder_logits(params, val[:, :4], self.cfg.num_heads), val[:, 4])
        return {"val_loss": losses, "val_acc": correct.float().mean(1)}


def _member_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(each member's mean cross-entropy [M], correct answers [M, B]) of logits [M, B, vocab], target [M, B]."""
    m, batch, vocab = logits.shape
    losses = F.cross_entropy(logits.reshape(m * batch, vocab), target.reshape(-1), reduction="none").view(m, batch)
    return losses.mean(1), logits.detach().argmax(-1) == target


CONFIG = ModularConfig
TASK = ModularTask
