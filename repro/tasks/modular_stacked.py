"""The mod-97 Decoder's forward for M members' stacked parameters at once: batched matmuls for the linear
layers, elementwise products summed for the (tiny) attention scores and weighted values.

A population (repro/population.py) can run any task through torch.func.vmap over the task's own
model; for the Decoder this explicit version was 5-7% faster on an H200 with batched matmuls in the
attention too, and the elementwise attention then made a compiled 128-member step 1.3x faster
(results/bench); it also needs no vmap rules (SDPA's CPU kernel has none). It is the same function as
modular.Decoder.forward, member by member, with every parameter carrying a leading member dimension M:

    params: {Decoder parameter name: [M, *shape]}   tokens: [M, seq, batch] long   ->   logits [M, batch, vocab]

Each operation follows the one nn.MultiheadAttention / SDPA's math kernel / nn.Linear / nn.LayerNorm
computes for one member (q and k each scaled by sqrt(1/sqrt(head_dim)), the float causal mask added to
the scores, the reference's residual quirk), so a member's logits equal its solo model's to float
rounding (tests/test_modular_stacked.py).
"""
import torch
import torch.nn.functional as F


def _column(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-member vector [M, D] shaped to broadcast over [M, ..., D] (ndim dimensions)."""
    return v.view(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def row_chunks(members: int, rows: int) -> int:
    """How many chunks a weight gradient's reduction over `rows` is cut into (see _MemberProduct): the
    most, a power of two dividing `rows`, with at most 64 products in the batch and 128 rows in each; 1 for
    large populations, whose batch already fills the GPU."""
    chunks = 1
    while members * chunks * 2 <= 64 and rows % (chunks * 2) == 0 and rows // (chunks * 2) >= 128:
        chunks *= 2
    return chunks


class _MemberProduct(torch.autograd.Function):
    """rows [M, T, in] @ weight[m].T for every member m, by one batched matmul; the weight's gradient
    (rows[m].T @ grad[m], a reduction over the T rows) is summed over chunks of the rows.

    cuBLAS's batched GEMM does not split a reduction: for a few members each [out, in] gradient tile
    walks all T rows (mod-97: 2,048) alone, so those products dominate a small population's step where a
    solo run's split-K GEMM is quick (docs/performance.md). As M x chunks products of T / chunks rows it is
    the same sum in another order (float rounding)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.dtypes = rows.dtype, weight.dtype
        device = rows.device.type
        if torch.is_autocast_enabled(device):  # the casts autocast's bmm would make, kept for backward
            dtype = torch.get_autocast_dtype(device)
            rows, weight = rows.to(dtype), weight.to(dtype)
        ctx.save_for_backward(rows, weight)
        return torch.bmm(rows, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        rows_dtype, weight_dtype = ctx.dtypes
        m, t, n_in = rows.shape
        chunks = row_chunks(m, t)
        grad = grad.to(rows.dtype)
        grad_rows = torch.bmm(grad, weight).to(rows_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.reshape(m * chunks, t // chunks, -1).transpose(1, 2),
                                rows.reshape(m * chunks, t // chunks, n_in))
        return grad_rows, grad_weight.view(m, chunks, -1, n_in).sum(1, dtype=weight_dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, ..., in] @ weight[m].T + bias[m] for every member m (nn.Linear per member).

    The bias is added after the product, not by baddbmm: on CUDA baddbmm first copies the broadcast bias
    into its whole output (a pass over the activations), where torch.compile fuses a separate add into
    the next elementwise kernel; the same sum, to float rounding."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    out = _MemberProduct.apply(rows, weight)
    if bias is not None:
        out = out + bias[:, None, :]
    return out.view(*x.shape[:-1], weight.shape[1])


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return torch.addcmul(_column(bias, x.ndim), F.layer_norm(x, x.shape[-1:], eps=eps), _column(weight, x.ndim))


def _attention(p: dict, prefix: str, x: torch.Tensor, num_heads: int, last_only: bool) -> torch.Tensor:
    """nn.MultiheadAttention(query, x, x) per member, query = x or its last position; x [M, seq, batch, dim]."""
    m, seq, batch, dim = x.shape
    head_dim = dim // num_heads
    w_in, b_in = p[prefix + "in_proj_weight"], p[prefix + "in_proj_bias"]
    if last_only:  # MHA with a query other than the key: q from the first third, k and v from the rest
        q = _linear(x[:, -1:], w_in[:, :dim], b_in[:, :dim])
        k, v = _linear(x, w_in[:, dim:], b_in[:, dim:]).chunk(2, dim=-1)
    else:
        q, k, v = _linear(x, w_in, b_in).chunk(3, dim=-1)

    def heads(t):  # [M, len, batch, dim] -> [M, batch, heads, len, head_dim]
        return t.reshape(m, t.shape[1], batch, num_heads, head_dim).permute(0, 2, 3, 1, 4)

    root_scale = (1.0 / head_dim ** 0.5) ** 0.5  # SDPA's math kernel scales q and k by sqrt(scale) each
    # len x len (len <= 4) by head_dim: products summed, which torch.compile fuses, not cuBLAS gemv kernels
    q, k, v = heads(q) * root_scale, heads(k) * root_scale, heads(v)
    scores = (q[..., :, None, :] * k[..., None, :, :]).sum(-1)  # [M, batch, heads, query len, key len]
    if not last_only:  # the float causal mask (-inf above the diagonal); the last query sees every key
        scores = scores + torch.full((seq, seq), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
    out = (scores.softmax(-1)[..., None] * v[..., None, :, :]).sum(-2)  # [M, batch, heads, len, head_dim]
    out = out.permute(0, 3, 1, 2, 4).reshape(m, -1, batch, dim)
    return _linear(out, p[prefix + "out_proj.weight"], p[prefix + "out_proj.bias"])


def stacked_decoder_logits(params: dict, tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Every member's Decoder(tokens[m]) (the answer's logits) from stacked parameters -> [M, batch, vocab]."""
    m, seq, batch = tokens.shape
    emb = params["token_embeddings.weight"]  # [M, vocab, dim]
    vocab, dim = emb.shape[1:]
    offsets = torch.arange(m, device=tokens.device)[:, None, None] * vocab
    h = F.embedding(tokens + offsets, emb.reshape(m * vocab, dim))  # [M, seq, batch, dim]
    h = h + params["position_embeddings.weight"][:, :seq, None, :]
    num_layers = 1 + max(int(name.split(".")[1]) for name in params if name.startswith("layers."))
    for i in range(num_layers):
        prefix, last_only = f"layers.{i}.", i == num_layers - 1
        x = _layer_norm(h, params[prefix + "ln_1.weight"], params[prefix + "ln_1.bias"])
        query = x[:, -1:] if last_only else x
        x = query + _attention(params, prefix + "attn.", x, num_heads, last_only)  # the reference's quirk
        hidden = F.gelu(_linear(_layer_norm(x, params[prefix + "ln_2.weight"], params[prefix + "ln_2.bias"]),
                                params[prefix + "mlp.0.weight"], params[prefix + "mlp.0.bias"]))
        h = x + _linear(hidden, params[prefix + "mlp.2.weight"], params[prefix + "mlp.2.bias"])
    logits = _linear(_layer_norm(h, params["ln_f.weight"], params["ln_f.bias"]), params["head.weight"])
    return logits[:, -1]
