"""IMDb sentiment with a 2-layer LSTM (the paper's IMDb table; the reference's main_imdb.py).

Data: the first `num_reviews` (1000) reviews, stratified 75/25 split (750 train / 250 val), the
`vocab_size` most frequent non-stop words (index 0 = padding), left-padded / cut to `seq_len` (500);
see repro/data/imdb.py. Model: embedding 64 -> LSTM(64 -> 256, 2 layers, batch_first) from a zero
hidden state -> the last time step's output -> Linear(256, 1) -> sigmoid, BCE loss; every initial
parameter x6 (`init_scale`). AdamW lr 3e-4 (default betas 0.9, 0.999), weight decay 1.0, batch 50,
gradient-norm clipping at 5.0 before the filter, 10k updates. The leading padding that every row of a
batch shares runs once, for one row (SentimentLSTM._last_output; the same function, less arithmetic).

Two kinds of validation, both logged:
- `val_batch_acc` / `val_batch_loss` (every step): the reference's protocol, one random batch of 50
  validation reviews after each update (`next(iter(valid_loader))` with shuffle=True: 50 distinct
  reviews). The paper's IMDb "best val acc / min val loss" are the max / min of these noisy values.
- `val_acc` / `val_loss` / `train_acc` / `train_loss` (at step 1, every `eval_every` steps and the
  last step): the whole validation (250) and training (750) splits. Records of other steps lack
  these keys (the engine allows key sets to differ between evaluations).
"""
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from repro.config import FLOAT32_MAX, Config
from repro.data.imdb import load_imdb
from repro.data.paths import resolve_data_dir
from repro.errors import UserError
from repro.memory import FLOAT, LONG, Footprint
from repro.tasks.base import EpochBatches, Task, scale_parameters_

PREFIX_STEP = 25  # a batch's shared padding is rounded down to a multiple of this (shared_prefixes)
VAL_SEED_OFFSET = 1 << 48  # keeps the validation-batch generator's seeds apart from EpochBatches'
IMDB_REVIEWS = 50_000  # the labelled reviews of the IMDb dataset


@dataclass(frozen=True)
class ImdbConfig(Config):
    task: str = "imdb"
    num_reviews: int = 1000  # the reference's --size: the first rows of the CSV
    vocab_size: int = 1000
    seq_len: int = 500
    embedding_dim: int = 64
    hidden_dim: int = 256
    num_layers: int = 2
    init_scale: float = 6.0  # every initial parameter multiplied by this (1.0: no grokking)
    # the reference's defaults: AdamW(lr 3e-4, default betas), wd 1.0, batch 50, clip 5.0, 10k steps
    budget: int = 10_000
    batch_size: int = 50
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1.0
    optimizer: str = "AdamW"
    clip_grad_norm: float = 5.0
    warmup_steps: int = 0
    eval_every: int = 50  # whole-split evaluation grid (plus step 1 and the last step)
    eval_chunk: int = 1000  # rows per forward in whole-split evaluation: on a GPU a 500-step LSTM costs
    # about the same for 50 rows as for 1000 (it is latency-bound), so one chunk is ~20x cheaper than 20

    ALIASES: ClassVar[dict] = {"iterations": "budget", "gradient_clip": "clip_grad_norm", "size": "num_reviews"}
    HELP: ClassVar[dict] = {
        "num_reviews": "reviews used: the first N rows of the CSV (>= 8), three quarters train, one validates",
        "vocab_size": "most frequent words kept; the others are dropped",
        "seq_len": "tokens per review (longer ones cut, shorter ones padded)",
        "embedding_dim": "word embedding width",
        "hidden_dim": "LSTM hidden units",
        "num_layers": "LSTM layers",
        "init_scale": "every initial parameter multiplied by this (> 0; 1 shows no grokking)",
        "eval_every": "steps between evaluations of the whole splits (plus step 1 and the last step)",
        "eval_chunk": "rows per forward when evaluating a whole split (memory against speed)",
    }

    def validate(self) -> None:
        super().validate()
        if self.num_reviews < 8:
            raise UserError("invalid config: num_reviews must be >= 8")
        if self.vocab_size < 1 or self.seq_len < 1:
            raise UserError("invalid config: vocab_size and seq_len must be >= 1")
        if self.embedding_dim < 1 or self.hidden_dim < 1 or self.num_layers < 1:
            raise UserError("invalid config: embedding_dim, hidden_dim and num_layers must be >= 1")
        if not 0 < self.init_scale <= FLOAT32_MAX:  # beyond it the float32 parameters start infinite
            raise UserError(f"invalid config: init_scale must be a positive number at most {FLOAT32_MAX:.3g}")
        if self.eval_every < 1:
            raise UserError("invalid config: eval_every must be >= 1")
        if self.eval_chunk < 1:
            raise UserError("invalid config: eval_chunk must be >= 1")
        n_val = -(-self.num_reviews // 4)  # the loader's validation quarter, ceil(0.25 * num_reviews)
        if self.batch_size > n_val:
            raise UserError(f"invalid config: batch_size {self.batch_size} exceeds the {n_val} validation reviews "
                            f"(the per-step validation batch has batch_size rows)")


def lstm_parameters(vocab_size: int, embedding_dim: int, hidden_dim: int, num_layers: int) -> int:
    """SentimentLSTM(vocab_size, embedding_dim, hidden_dim, num_layers)'s parameter count, in closed form
    (each LSTM layer: input and hidden weights of the 4 gates, and their two biases)."""
    first = 4 * hidden_dim * (embedding_dim + hidden_dim) + 8 * hidden_dim
    others = (num_layers - 1) * (8 * hidden_dim * hidden_dim + 8 * hidden_dim)
    return vocab_size * embedding_dim + first + others + hidden_dim + 1


def leading_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Per row, how many of its first tokens are padding (id 0; the loader pads on the left)."""
    return (tokens != 0).int().cumsum(dim=1).eq(0).sum(dim=1)


def shared_prefixes(leading: torch.Tensor, batches: list[torch.Tensor], multiple: int) -> list[int]:
    """Each index batch's shared leading padding (the least of its rows' `leading`), rounded down to a
    multiple of `multiple`: a batch's width then takes a few values, and the engine captures a CUDA graph
    for each. One host sync for all the batches."""
    least = torch.stack([leading[idx].min() for idx in batches])
    return (least // multiple * multiple).tolist()


class SentimentLSTM(nn.Module):
    """The reference's SentimentRNN (drop_prob=0.0, so its identity dropout is left out).

    The reference applies fc + sigmoid to every time step and keeps the last; applying them to the
    last step only gives the same numbers. Parameter names match the reference's (embedding, lstm, fc).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden_dim: int = 256, num_layers: int = 2):
        super().__init__()
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, tokens: torch.Tensor, pad_prefix: int = 0) -> torch.Tensor:
        """(batch, seq) token ids -> (batch,) probabilities of 'positive'. Each row is `pad_prefix` padding
        tokens (id 0) followed by its `tokens` row (see _last_output)."""
        if tokens.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no fp16/bf16 LSTM: under --amp on the CPU the LSTM itself stays fp32
            with torch.autocast("cpu", enabled=False):
                last = self._last_output(tokens, pad_prefix)
        else:
            last = self._last_output(tokens, pad_prefix)
        return torch.sigmoid(self.fc(last)).squeeze(-1)

    def _last_output(self, tokens: torch.Tensor, pad_prefix: int) -> torch.Tensor:
        """The top layer's output at the last time step, from the reference's zero (h0, c0). Reviews are
        left-padded, and from one zero state the same padding tokens lead every row through the same
        states: the `pad_prefix` padding steps that all rows start with run once, for one row, and every
        row continues from where it ended (the same function; the gradient sums over the rows through
        expand). On the paper's data a batch shares 125-375 of its 500 steps."""
        batch = tokens.shape[0]
        zeros = torch.zeros(self.num_layers, batch, self.hidden_dim, device=tokens.device,
                            dtype=self.embedding.weight.dtype)
        state = (zeros, zeros)
        if pad_prefix > 0:
            padding = self.embedding(tokens.new_zeros(1, pad_prefix))
            one = zeros[:, :1].contiguous()  # cuDNN wants contiguous states
            _, (h, c) = self.lstm(padding, (one, one))
            state = (h.expand(-1, batch, -1).contiguous(), c.expand(-1, batch, -1).contiguous())
        out, _ = self.lstm(self.embedding(tokens), state)
        return out[:, -1]


def bce(prob: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The reference's nn.BCELoss on sigmoid outputs (log clamped at -100; kept, not BCE-with-logits,
    because with init x6 the sigmoid saturates and the two differ in value and gradient). In fp32 and
    outside autocast: CUDA autocast refuses binary_cross_entropy as unsafe in half precision."""
    with torch.autocast(prob.device.type, enabled=False):
        prob = prob.float()
        # torch's BCE refuses a NaN input (a traceback, on CUDA a device assert): NaN enters as 0.5 and
        # comes back through `+ 0 * sum`, so a diverged forward gives a NaN loss for the engine's check;
        # for finite probabilities both are exact no-ops (values and gradients unchanged)
        loss = F.binary_cross_entropy(torch.nan_to_num(prob, nan=0.5), target.float(), reduction=reduction)
        return loss + 0.0 * prob.sum()


class ImdbTask(Task):
    name = "imdb"
    graph_safe_loss = True  # no dropout, no host sync: embedding + cuDNN LSTM + linear + BCE
    graph_safe_eval = True  # the per-step batch replays a graph (its indices staged); the grid runs eagerly
    batch_dim = 0  # (batch, seq_len - k + 1) rows

    @classmethod
    def footprint(cls, cfg: ImdbConfig) -> Footprint:
        """Closed-form sizes for repro.memory (float32 activations; rough). The vocabulary is at most
        vocab_size words (+ padding); the CSV at most IMDB_REVIEWS rows (more fail in the loader)."""
        reviews = min(cfg.num_reviews, IMDB_REVIEWS)
        n_val = -(-reviews // 4)
        n_train = reviews - n_val
        seq, emb, hidden, layers = cfg.seq_len, cfg.embedding_dim, cfg.hidden_dim, cfg.num_layers
        batch = -(-min(cfg.batch_size, n_train) // cfg.grad_accum_steps)
        # training keeps, per row and time step, the embedding and each layer's gates and states for
        # backward (and their gradients)
        train = FLOAT * batch * seq * (2 * emb + 12 * hidden * layers)
        # evaluation: up to eval_chunk rows at once, no gradients: the embedding, a layer's gates and
        # outputs (about 1.2 GB measured for the defaults' 750 rows on the CPU)
        rows = min(cfg.eval_chunk, max(n_train, n_val))
        evaluate = FLOAT * rows * seq * (emb + 4 * hidden)
        # the token matrices, twice (apart and as training / validation rows with their label)
        data = 2 * reviews * (seq + 1) * LONG
        params = lstm_parameters(cfg.vocab_size + 1, emb, hidden, layers)
        return Footprint(params, data, train, evaluate)

    def __init__(self, cfg: ImdbConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        data = load_imdb(resolve_data_dir(cfg.data_dir), num_reviews=cfg.num_reviews, vocab_size=cfg.vocab_size,
                         seq_len=cfg.seq_len, seed=cfg.seed)
        self.x_train, self.y_train = data["x_train"].to(device), data["y_train"].to(device)
        self.x_val, self.y_val = data["x_val"].to(device), data["y_val"].to(device)
        # a training batch is one tensor, tokens then the 0/1 label as a last column: the engine's CUDA
        # graphs copy a batch into a static tensor (see repro/graphs.py)
        self.train_rows = torch.cat([self.x_train, self.y_train.long()[:, None]], dim=1)
        self.vocab_size = len(data["vocab"]) + 1  # + padding index 0, as the reference
        n_train, n_val = len(self.y_train), len(self.y_val)
        if cfg.batch_size > n_val:
            raise UserError(f"invalid config: batch_size {cfg.batch_size} exceeds the {n_val} validation reviews "
                            f"(the per-step validation batch has batch_size rows)")

        torch.manual_seed(cfg.seed)  # model init
        self.model = SentimentLSTM(self.vocab_size, cfg.embedding_dim, cfg.hidden_dim, cfg.num_layers).to(device)
        # the leading padding shared by the rows of a forward (SentimentLSTM._last_output), at most all but
        # the last token: a batch's own (found a block of steps ahead, one host sync per block) or a whole
        # split's
        self.last_token = self.x_train.shape[1] - 1
        self.train_leading = leading_padding(self.x_train).clamp(max=self.last_token)
        self.val_leading = leading_padding(self.x_val).clamp(max=self.last_token)
        self.train_prefix, self.val_prefix = int(self.train_leading.min()), int(self.val_leading.min())
        self.prefix_step: int | None = PREFIX_STEP  # None: every batch starts at its split's prefix
        self._train_prefixes: dict[int, int] = {}  # step -> its batch's prefix, for the current block
        self._val_prefixes: dict[int, int] = {}
        scale_parameters_(self.model, cfg.init_scale)
        # DataLoader(shuffle=True, batch_size=50), drop_last=False: 750 / 50 = 15 full batches an epoch
        self.batches = EpochBatches(n_train, cfg.batch_size, cfg.seed, device)
        self._val_generator = torch.Generator(device=device)
        self._val_batch = self.val_batch_indices(1)  # the fixed tensor a graphed evaluation reads
        self.last_step = cfg.steps

    # ---- training -----------------------------------------------------------------------------
    def train_batch(self, step: int) -> torch.Tensor:
        """(batch_size, seq_len - k + 1) long: the tokens after the k leading padding tokens that every row
        of the batch has (batch_prefix), then the label."""
        return self.train_rows[self.batches(step)][:, self.batch_prefix(step):]

    def batch_prefix(self, step: int) -> int:
        """The padding that every row of update `step`'s batch starts with (shared_prefixes), found for the
        whole epoch at its first step."""
        if self.prefix_step is None:
            return self.train_prefix
        first = step - step % self.batches.batches_per_epoch
        return self._block_prefix(step, self._train_prefixes, self.train_leading,
                                  range(first, first + self.batches.batches_per_epoch), self.batches)

    def _block_prefix(self, step: int, cache: dict[int, int], leading: torch.Tensor, block: range,
                      indices: Callable[[int], torch.Tensor]) -> int:
        """`step`'s entry of `cache` (step -> its batch's shared prefix), which is refilled for the steps of
        `block` (their batches: `indices(step)`) in one host sync when `step` is not in it."""
        if step not in cache:
            cache.clear()
            cache.update(zip(block, shared_prefixes(leading, [indices(s) for s in block], self.prefix_step)))
        return cache[step]

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        tokens = batch[:, :-1]
        return bce(self.model(tokens, self.last_token + 1 - tokens.shape[1]), batch[:, -1].float())

    # ---- evaluation ---------------------------------------------------------------------------
    def is_eval_step(self, step: int) -> bool:
        return True  # the reference's random validation batch is taken after every update

    def is_grid_step(self, step: int) -> bool:
        """Whether evaluation after `step` updates also covers the whole train and validation splits."""
        return step == 1 or step % self.cfg.eval_every == 0 or step == self.last_step

    def val_batch_indices(self, step: int) -> torch.Tensor:
        """The reference's `next(iter(valid_loader))`: batch_size distinct validation rows drawn afresh,
        here from a generator seeded with (seed, step), so it is deterministic and resumable."""
        self._val_generator.manual_seed(self.cfg.seed * 1_000_003 + step + VAL_SEED_OFFSET)
        perm = torch.randperm(len(self.y_val), generator=self._val_generator, device=self.device)
        return perm[:self.cfg.batch_size]

    def val_batch_prefix(self, step: int) -> int:
        """The padding that every row of step's validation batch starts with (shared_prefixes), found for
        a block of steps at its first. The engine asks eval_graph_key, which asks this, before it captures
        an evaluation graph: no host sync happens inside a capture."""
        if self.prefix_step is None:
            return self.val_prefix
        return self._block_prefix(step, self._val_prefixes, self.val_leading,
                                  range(step, step + self.batches.batches_per_epoch), self.val_batch_indices)

    @staticmethod
    def _sums(prob: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed BCE, correct answers) of one forward; (prob > 0.5) == y is the reference's
        torch.round(prob) == y."""
        return bce(prob, target, reduction="sum"), ((prob > 0.5).float() == target).sum()

    def _metrics(self, tokens: torch.Tensor, target: torch.Tensor,
                 pad_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean BCE, accuracy) over `tokens` (rows of a split with `pad_prefix` shared leading pads), in chunks
        of `eval_chunk` rows (bounds the memory of the LSTM's per-time-step outputs: 1000 rows x 500 steps x
        256 floats = 0.5 GB)."""
        chunk, n = self.cfg.eval_chunk, len(target)
        sums = [self._sums(self.model(tokens[i:i + chunk, pad_prefix:], pad_prefix), target[i:i + chunk])
                for i in range(0, n, chunk)]
        loss, correct = (torch.stack(parts).sum() for parts in zip(*sums))
        return loss / n, correct / n

    def eval_graph_key(self, step: int) -> tuple[str, int] | None:
        # the per-step batch is a fixed computation for each width; the grid's 1000-row forward stays
        # eager (a graph would keep its activations' memory for the whole run)
        return None if self.is_grid_step(step) else ("val_batch", self.val_batch_prefix(step))

    def stage_eval(self, step: int) -> None:
        self._val_batch.copy_(self.val_batch_indices(step))

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        if not (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            self.stage_eval(step)  # a graph being captured reads what the engine staged
        idx = self._val_batch
        val_batch_loss, val_batch_acc = self._metrics(self.x_val[idx], self.y_val[idx],
                                                      self.val_batch_prefix(step))
        out = {"val_batch_loss": val_batch_loss, "val_batch_acc": val_batch_acc}
        if self.is_grid_step(step):
            train_loss, train_acc = self._metrics(self.x_train, self.y_train, self.train_prefix)
            val_loss, val_acc = self._metrics(self.x_val, self.y_val, self.val_prefix)
            out.update(train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc)
        self.model.train(was_training)
        return out

    def table_metrics(self, records: list[dict]) -> dict:
        """The paper's IMDb table: best val acc / min val loss, by the reference's per-step batch of
        50 (`*_val_batch_*`) and on the whole validation split."""
        def pick(key, fn):
            values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and r[key] == r[key]
                      and abs(r[key]) != float("inf")]
            return fn(values) if values else None

        grid = [r for r in records if "val_acc" in r]
        return {
            "best_val_batch_acc": pick("val_batch_acc", max),
            "min_val_batch_loss": pick("val_batch_loss", min),
            "best_val_acc": pick("val_acc", max),
            "min_val_loss": pick("val_loss", min),
            "final_val_acc": grid[-1]["val_acc"] if grid else None,
        }

    def run_name_part(self) -> str:
        cfg = self.cfg
        part = f"imdb_n{cfg.num_reviews}_init{cfg.init_scale:g}"
        if cfg.seq_len != 500:
            part += f"_L{cfg.seq_len}"
        if cfg.vocab_size != 1000:
            part += f"_v{cfg.vocab_size}"
        return part


CONFIG = ImdbConfig
TASK = ImdbTask
