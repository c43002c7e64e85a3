"""QM9 polarizability with a small NNConv GNN (the paper's QM9 table; the reference's main_qm9.py).

Data: the first `size` (100) QM9 molecules (repro/data/qm9.py, PyG's graphs and features), a random
50/50 split, target y[:, target] (1 = isotropic polarizability alpha, bohr^3), **not normalised**
(the reference regresses the raw bohr^3 values). Model: NNConv(11->32, edge MLP 4->32->11*32) -> ReLU
-> NNConv(32->16, edge MLP 4->32->32*16) -> ReLU -> global add pool -> Linear(16->32) -> ReLU ->
Linear(32->1); NNConv with PyG's defaults (aggr 'add', root weight, bias), edge MLPs with a ReLU
between their two Linears. Every initial parameter x3 (`init_scale`). AdamW lr 1e-3 with the default
betas (0.9, 0.999), weight decay 0 (Grokfast row: 0.01), batch 32, MSE loss.

Mirrored from the reference exactly: `torch.manual_seed(seed)`, then the split is the first
`torch.randperm(size)` (what `random_split` draws: the first size//2 indices train, the rest
validation), then the model is built from the same global RNG stream in the reference's order
(both edge MLPs, then NNConv 1 and 2, which re-initialise their MLPs, then the two Linears), so
seed s gives the reference's split and initial weights for seed s.

Not mirrored: the reference's DataLoader(shuffle=True) draws each epoch's order from the global RNG;
here EpochBatches (seeded by (seed, epoch), drop_last=False: batches of 32 and 18 for 50 molecules)
on the CPU, so the shuffles are the same on every device.

Budget: the reference trains int(100 * 50000 / size) epochs (50,000 for size 100) of
ceil((size // 2) / batch_size) updates (2), i.e. 100,000 updates. `budget: 0` (the default) means
exactly that; any other value is the number of updates.

Evaluation once per epoch (every 2 updates; `eval_every` overrides): `val_loss` / `train_loss` are the
per-molecule mean squared errors over the whole validation / training split after the epoch's last
update. The reference's test loss is the same number (it sums batch-mean MSE x batch size over the
test loader, divided by the molecule count). Its train curve is different: the running per-molecule
mean of the training batches' losses during the epoch (before each update); here `train_loss` is
measured after the epoch, like the validation loss. The paper's table metric is the lowest
per-epoch mean validation MSE: `min_val_loss`.

Speed: all graphs live on the device, pre-collated as one batch; a mini-batch is gathered from a list
of graph ids with a few vectorised index ops (`GraphStore.gather`), no PyG collation, no Python loop
per graph. A training batch is padded to a fixed size per batch size (the sum of the largest train
molecules' node / edge counts, + 1): padding nodes have zero features and their own graph slot,
padding edges are self-loops on a padding node, so real graphs' outputs are unchanged and the pooled
padding row is dropped. `train_batch` returns only the molecule ids (on the device) and `loss` gathers
and runs the model, every size given, so a training step has fixed shapes (two: batches of 32 and
18) and no host sync, and the engine replays it as a CUDA graph (as it does evaluation).

`fast_conv` (default on): the layers are PyG's NNConv modules (same parameters, names, init), but their
forward is evaluated in an equivalent, cheaper way. NNConv runs the edge MLP on every edge (E x 4 ->
E x in*out) and multiplies each source node by its edge's matrix (a batched 1 x in @ in x out per edge),
which is ~95% of the step's arithmetic. The edge features are one-hot bond types, so the first 100
molecules have only 3 distinct rows: the MLP is run once per distinct row (T rows), every node is
multiplied by all T matrices at once (N x in @ in x T*out) and each edge picks its (source, type)
entry. Same function and gradients up to float rounding (tests/test_qm9_task.py compares both with
PyG's NNConv.forward); `--fast_conv false` runs PyG's forward itself.
"""
import warnings
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from repro.config import FLOAT32_MAX, Config
from repro.errors import UserError
from repro.memory import FLOAT, LONG, Footprint
from repro.tasks.base import EpochBatches, Task, scale_parameters_

NUM_NODE_FEATURES, NUM_EDGE_FEATURES, NUM_TARGETS = 11, 4, 19
QM9_MOLECULES = 130_831  # characterized molecules, in the qm9pack table and in PyG's QM9 alike
# per molecule, for memory estimates: QM9 has 18 atoms on average (29 at most) and about as many bonds,
# each an edge in both directions
NODES_PER_MOLECULE, EDGES_PER_MOLECULE = 20, 40
FEATURE_MODES = ("pyg", "sanitized")  # repro.data.qm9.FEATURE_MODES (not imported: that pulls in pandas)


def import_pyg():
    """PyG's modules used here, imported without the FutureWarning PyG 2.8 triggers on torch 2.14
    (`torch.jit.script` is deprecated), which would break the entry point's one-line stderr on errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        import torch_geometric.nn
        from repro.data import qm9
    return torch_geometric.nn, qm9


def reference_epochs(size: int) -> int:
    """The reference's epoch count: int(100 * 50000 / size)."""
    return int(100 * 50000 / size)


@dataclass(frozen=True)
class Qm9Config(Config):
    task: str = "qm9"
    size: int = 100  # the first `size` QM9 molecules; half train, half validation (reference --size)
    target: int = 1  # column of y: 1 = isotropic polarizability alpha (bohr^3), as the reference
    init_scale: float = 3.0  # every initial parameter multiplied by this (1.0: no grokking)
    features: str = "pyg"  # repro.data.qm9: "pyg" (PyG's unsanitized features) or "sanitized"
    download: bool = False  # True: PyG's own QM9 download instead of the local table
    # the reference's defaults: AdamW(lr 1e-3, default betas), wd 0, batch 32
    budget: int = 0  # updates; 0 = the reference's int(100*50000/size) epochs (100,000 updates for size 100)
    batch_size: int = 32
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    optimizer: str = "AdamW"
    eval_every: int = 0  # 0 = once per epoch (every ceil((size // 2) / batch_size) updates), as the reference
    fast_conv: bool = True  # NNConv's edge MLP once per distinct edge-feature row (same function); False: PyG's forward

    ALIASES: ClassVar[dict] = {}  # the reference's flags (--size, --init_scale, ...) are field names here
    CHOICES: ClassVar[dict] = {"features": FEATURE_MODES}
    HELP: ClassVar[dict] = {
        "size": "molecules: the first N of QM9 (>= 2), half train, half validation (a random split per seed)",
        "target": "which of QM9's 19 targets (0..18); 1 = isotropic polarizability alpha, in bohr^3",
        "init_scale": "every initial parameter multiplied by this (> 0; 1 shows no grokking)",
        "features": "atom and bond features: pyg (PyG's, from unsanitized molecules) or sanitized",
        "download": "PyG's own QM9 download instead of the local table",
        "budget": "optimisation steps; 0 = the reference's int(100*50000/size) epochs (100,000 steps for size "
                  "100). --max_steps stops a run earlier",
        "eval_every": "steps between evaluations; 0 = once per epoch, ceil((size // 2) / batch_size) steps",
        "fast_conv": "NNConv's edge network once per distinct edge-feature row (the same function); false: "
                     "PyG's forward",
    }

    def __post_init__(self) -> None:
        if self.budget == 0 and self.size >= 2 and self.batch_size >= 1:  # resolved, so config.yaml says it
            object.__setattr__(self, "budget", reference_epochs(self.size) * self.steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return -(-(self.size // 2) // self.batch_size)

    def validate(self) -> None:
        if self.size < 2:
            raise UserError("invalid config: size must be >= 2 (half train, half validation)")
        if self.size > QM9_MOLECULES:
            raise UserError(f"invalid config: size {self.size} exceeds the {QM9_MOLECULES} molecules of QM9")
        super().validate()
        if not 0 <= self.target < NUM_TARGETS:
            raise UserError(f"invalid config: target must be in [0, {NUM_TARGETS})")
        if not 0 < self.init_scale <= FLOAT32_MAX:  # beyond it the float32 parameters start infinite
            raise UserError(f"invalid config: init_scale must be a positive number at most {FLOAT32_MAX:.3g}")
        if self.features not in FEATURE_MODES:
            raise UserError(f"invalid config: features must be one of {', '.join(FEATURE_MODES)}")
        if self.eval_every < 0:
            raise UserError("invalid config: eval_every must be >= 0")


class GraphBatch(NamedTuple):
    """A collated mini-batch, as PyG's Batch holds it (edge_index already offset per graph), possibly
    followed by padding: nodes with zero features in graph slot `num_graphs` and self-loop edges on the
    last node (a padding node), which touch no real graph."""
    x: torch.Tensor  # (N, 11)
    edge_index: torch.Tensor  # (2, E), indices into x
    edge_attr: torch.Tensor  # (E, 4)
    batch: torch.Tensor  # (N,) graph slot of every node; num_graphs for padding nodes
    y: torch.Tensor  # (B, 1) target
    num_graphs: int
    edge_type: torch.Tensor  # (E,) row of `type_attr` equal to each edge's edge_attr
    type_attr: torch.Tensor  # (T, 4) the distinct edge-feature rows of the whole dataset


class GraphStore:
    """Every graph of a dataset concatenated on the device, and batches gathered from graph ids.

    Node features / edges are stored graph after graph; `local_edge_index` holds each graph's own node
    numbers. `gather` builds a batch with a fixed number of vectorised ops and no host sync, given its
    output sizes; the per-graph counts are also kept on the CPU, to compute exact sizes or paddings.
    """

    def __init__(self, graphs: list, target: int, device: torch.device):
        self.device = device
        self.num_nodes_cpu = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
        self.num_edges_cpu = torch.tensor([g.edge_index.shape[1] for g in graphs], dtype=torch.long)
        zero = torch.zeros(1, dtype=torch.long)
        x = torch.cat([g.x for g in graphs])
        self.pad_row = x.shape[0]  # a zero row after the last node: padding nodes read it
        self.x = torch.cat([x, x.new_zeros(1, x.shape[1])]).to(device)
        self.local_edge_index = torch.cat([g.edge_index for g in graphs], dim=1).to(device)
        type_attr, edge_type = torch.unique(torch.cat([g.edge_attr for g in graphs]), dim=0, return_inverse=True)
        self.type_attr, self.edge_type = type_attr.to(device), edge_type.to(device)
        self.y = torch.cat([g.y[:, target] for g in graphs]).view(-1, 1).to(device)
        self.num_nodes = self.num_nodes_cpu.to(device)
        self.num_edges = self.num_edges_cpu.to(device)
        self.node_ptr = torch.cat([zero, self.num_nodes_cpu.cumsum(0)]).to(device)
        self.edge_ptr = torch.cat([zero, self.num_edges_cpu.cumsum(0)]).to(device)

    def __len__(self) -> int:
        return len(self.num_nodes_cpu)

    def sizes(self, ids: torch.Tensor) -> tuple[int, int]:
        """Exact (nodes, edges) of the batch of graphs `ids` (a CPU tensor)."""
        return int(self.num_nodes_cpu[ids].sum()), int(self.num_edges_cpu[ids].sum())

    def padded_sizes(self, pool: torch.Tensor, num_graphs: int) -> tuple[int, int]:
        """(nodes, edges) that hold any `num_graphs` graphs of `pool` (CPU ids), plus one padding node
        and one padding edge, so every padding edge can sit on a padding node."""
        nodes = int(self.num_nodes_cpu[pool].sort(descending=True).values[:num_graphs].sum())
        edges = int(self.num_edges_cpu[pool].sort(descending=True).values[:num_graphs].sum())
        return nodes + 1, edges + 1

    def _layout(self, counts: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For `size` output slots filled graph after graph with counts[b] items each: the graph slot of
        every output item (len(counts) past the end), that slot clamped to a real one, and the item's
        position inside its graph."""
        end = counts.cumsum(0)
        position = torch.arange(size, device=self.device)
        slot = torch.searchsorted(end, position, right=True)
        real_slot = slot.clamp(max=len(counts) - 1)
        return slot, real_slot, position - (end - counts)[real_slot]

    def gather(self, ids: torch.Tensor, num_nodes: int | None = None, num_edges: int | None = None) -> GraphBatch:
        """The batch of graphs `ids`, in that order: what Batch.from_data_list gives, followed by padding
        up to (num_nodes, num_edges) when those exceed the exact sizes. Without sizes, `ids` must be on
        the CPU (the exact sizes are computed there); with them, nothing is read back from the device,
        so the ops can be captured in a CUDA graph."""
        if num_nodes is None or num_edges is None:
            num_nodes, num_edges = self.sizes(ids)
        g = ids.to(self.device, non_blocking=True)
        num_graphs = len(g)

        n = self.num_nodes[g]
        batch, node_slot, node_pos = self._layout(n, num_nodes)
        is_node = batch < num_graphs
        node_src = torch.where(is_node, self.node_ptr[g][node_slot] + node_pos, self.pad_row)
        node_start = n.cumsum(0) - n  # first output node of each graph

        edge_slot_or_pad, edge_slot, edge_pos = self._layout(self.num_edges[g], num_edges)
        is_edge = edge_slot_or_pad < num_graphs
        edge_src = torch.where(is_edge, self.edge_ptr[g][edge_slot] + edge_pos, 0)
        edge_index = torch.where(is_edge, self.local_edge_index[:, edge_src] + node_start[edge_slot], num_nodes - 1)
        edge_type = torch.where(is_edge, self.edge_type[edge_src], 0)
        return GraphBatch(self.x[node_src], edge_index, self.type_attr[edge_type], batch, self.y[g], num_graphs,
                          edge_type, self.type_attr)


def nnconv_by_edge_type(conv, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor,
                        type_attr: torch.Tensor) -> torch.Tensor:
    """PyG's NNConv(aggr='add', root_weight, bias).forward(x, edge_index, type_attr[edge_type]), evaluated
    with the edge MLP on the T distinct edge-feature rows only:

        out_i = sum_{e = (j -> i)} x_j @ W(type_e) + lin(x_i) + bias,  W(t) = nn(type_attr[t]).view(in, out)
    """
    in_channels, out_channels = conv.in_channels_l, conv.out_channels
    num_types = type_attr.shape[0]
    weight = conv.nn(type_attr).view(num_types, in_channels, out_channels)
    per_type = (x @ weight.permute(1, 0, 2).reshape(in_channels, num_types * out_channels))
    per_type = per_type.view(-1, num_types, out_channels)  # (N, T, out): every node through every type's matrix
    messages = per_type[edge_index[0], edge_type]  # source node j, the edge's type
    out = torch.zeros(x.shape[0], out_channels, device=x.device, dtype=messages.dtype)
    out = out.index_add(0, edge_index[1], messages)  # aggr 'add' at the target node
    return out + conv.lin(x) + conv.bias


def qm9net_parameters(num_node_features: int = NUM_NODE_FEATURES, num_edge_features: int = NUM_EDGE_FEATURES) -> int:
    """Qm9Net's parameter count, in closed form: two NNConvs (edge MLP e -> 32 -> in * out, root weight,
    bias) and the two Linears of the head."""
    def nnconv(n_in: int, n_out: int) -> int:
        return (num_edge_features * 32 + 32) + (32 * n_in * n_out + n_in * n_out) + n_in * n_out + n_out

    return nnconv(num_node_features, 32) + nnconv(32, 16) + (16 * 32 + 32) + (32 + 1)


class Qm9Net(nn.Module):
    """The reference's ExampleNet. Built in its order, so the same RNG state gives the same weights."""

    def __init__(self, num_node_features: int = NUM_NODE_FEATURES, num_edge_features: int = NUM_EDGE_FEATURES,
                 fast_conv: bool = True):
        pyg_nn = import_pyg()[0]
        NNConv = pyg_nn.NNConv

        super().__init__()
        self.fast_conv = fast_conv
        self.global_add_pool = pyg_nn.global_add_pool
        conv1_net = nn.Sequential(nn.Linear(num_edge_features, 32), nn.ReLU(), nn.Linear(32, num_node_features * 32))
        conv2_net = nn.Sequential(nn.Linear(num_edge_features, 32), nn.ReLU(), nn.Linear(32, 32 * 16))
        self.conv1 = NNConv(num_node_features, 32, conv1_net)  # aggr 'add', root weight, bias (PyG defaults)
        self.conv2 = NNConv(32, 16, conv2_net)
        self.fc_1 = nn.Linear(16, 32)
        self.out = nn.Linear(32, 1)
        for conv in (self.conv1, self.conv2):  # what nnconv_by_edge_type computes
            assert conv.aggr == "add" and conv.root_weight and conv.bias is not None and conv.flow == "source_to_target"

    def forward(self, g: GraphBatch) -> torch.Tensor:
        """(num_graphs, 1) predictions. Every size is given, so PyG never syncs to compute one."""
        if self.fast_conv:
            x = F.relu(nnconv_by_edge_type(self.conv1, g.x, g.edge_index, g.edge_type, g.type_attr))
            x = F.relu(nnconv_by_edge_type(self.conv2, x, g.edge_index, g.edge_type, g.type_attr))
        else:
            x = F.relu(self.conv1(g.x, g.edge_index, g.edge_attr))
            x = F.relu(self.conv2(x, g.edge_index, g.edge_attr))
        x = self.global_add_pool(x, g.batch, size=g.num_graphs + 1)[:g.num_graphs]  # row num_graphs: padding
        return self.out(F.relu(self.fc_1(x)))


class Qm9Task(Task):
    name = "qm9"
    # training batches are padded to fixed sizes per batch size, and built inside loss() from device ids;
    # evaluation is one fixed batch of all molecules; no host sync in the gather, NNConv or add pooling
    graph_safe_loss = graph_safe_eval = True
    batch_dim = 0  # a batch is a vector of molecule ids (any cut of it is padded to its own fixed sizes)

    @classmethod
    def footprint(cls, cfg: Qm9Config) -> Footprint:
        """Closed-form sizes for repro.memory (float32 activations; rough)."""
        def forward(molecules: int) -> int:
            nodes, edges = NODES_PER_MOLECULE * molecules, EDGES_PER_MOLECULE * molecules
            if cfg.fast_conv:  # every node through each of (at most 4) bond types' matrices, then messages
                return FLOAT * (nodes * (4 * 48 + 100) + edges * 100)
            # PyG's NNConv: the edge MLP's in * out matrix for every edge
            return FLOAT * (nodes * 100 + edges * (100 + NUM_NODE_FEATURES * 32 + 32 * 16))

        batch = -(-min(cfg.batch_size, cfg.size // 2) // cfg.grad_accum_steps)
        # the graph store and the evaluation batch of all molecules: features, edges, graph slots
        data = cfg.size * (NODES_PER_MOLECULE * 2 * (NUM_NODE_FEATURES * FLOAT + LONG)
                           + EDGES_PER_MOLECULE * (4 * LONG + NUM_EDGE_FEATURES * FLOAT))
        return Footprint(qm9net_parameters(), data, 2 * forward(batch), forward(cfg.size))

    def __init__(self, cfg: Qm9Config, device: torch.device):
        from repro.data.paths import resolve_data_dir

        load_qm9 = import_pyg()[1].load_qm9
        self.cfg, self.device = cfg, device
        dataset = load_qm9(resolve_data_dir(cfg.data_dir), max_molecules=cfg.size, download=cfg.download,
                           features=cfg.features)
        if len(dataset) < cfg.size:
            raise UserError(f"QM9: {len(dataset)} molecules available, size {cfg.size} asked for")
        self.store = GraphStore([dataset[i] for i in range(cfg.size)], cfg.target, device)

        # the reference: torch.manual_seed(seed); random_split (one randperm); then the model
        torch.manual_seed(cfg.seed)
        order = torch.randperm(cfg.size)
        n_train = cfg.size // 2
        self.train_ids, self.val_ids = order[:n_train], order[n_train:]
        self.model = Qm9Net(fast_conv=cfg.fast_conv).to(device)
        scale_parameters_(self.model, cfg.init_scale)

        self.batches = EpochBatches(n_train, cfg.batch_size, cfg.seed, torch.device("cpu"))
        self.eval_every = cfg.eval_every or self.batches.batches_per_epoch
        self.eval_batch = self.store.gather(torch.cat([self.train_ids, self.val_ids]))  # one forward for both
        self.n_train = n_train
        self._padded_sizes: dict[int, tuple[int, int]] = {}

    def train_batch(self, step: int) -> torch.Tensor:
        """The ids (on the device) of the molecules of update `step`; loss() gathers them."""
        return self.train_ids[self.batches(step)].to(self.device, non_blocking=True)

    def padded_sizes(self, num_graphs: int) -> tuple[int, int]:
        """(nodes, edges) a training batch of `num_graphs` molecules is padded to: fixed shapes per batch
        size (32 and 18 for 50 molecules), so each can be replayed as a CUDA graph."""
        if num_graphs not in self._padded_sizes:
            self._padded_sizes[num_graphs] = self.store.padded_sizes(self.train_ids, num_graphs)
        return self._padded_sizes[num_graphs]

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        batch = self.store.gather(ids, *self.padded_sizes(len(ids)))
        return F.mse_loss(self.model(batch), batch.y)

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every == 0

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()  # no dropout / normalisation: the same function either way
        squared = (self.model(self.eval_batch) - self.eval_batch.y).square().view(-1)
        self.model.train(was_training)
        return {"train_loss": squared[:self.n_train].mean(), "val_loss": squared[self.n_train:].mean()}

    def table_metrics(self, records: list[dict]) -> dict:
        """The paper's QM9 column is the lowest per-epoch mean validation MSE (`min_val_loss`, common)."""
        finite = [r for r in records if isinstance(r.get("val_loss"), (int, float)) and r["val_loss"] == r["val_loss"]
                  and abs(r["val_loss"]) != float("inf")]
        best = min(finite, key=lambda r: r["val_loss"]) if finite else None
        return {
            "min_val_loss_step": best["step"] if best else None,
            "final_val_loss": records[-1].get("val_loss") if records else None,
            "final_train_loss": records[-1].get("train_loss") if records else None,
        }

    def run_name_part(self) -> str:
        cfg = self.cfg
        part = f"qm9_n{cfg.size}_init{cfg.init_scale:g}"
        if cfg.target != 1:
            part += f"_t{cfg.target}"
        if cfg.features != "pyg":
            part += f"_{cfg.features}"
        if cfg.download:
            part += "_pygdl"
        return part


CONFIG = Qm9Config
TASK = Qm9Task
