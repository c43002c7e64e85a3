"""The IMDb SentimentLSTM's forward for M members' stacked parameters at once.

nn.LSTM (cuDNN's on a GPU) has no vmap rule, and its time loop is latency-bound: one run's 500 time
steps leave most of a GPU idle. Here every member's recurrence advances together, one batched matmul
and one fused elementwise cell per time step and layer, so M members cost about what one does. Each
operation is nn.LSTM's (gates i, f, g, o; c = f*c + i*g; h = o*tanh(c); zero initial state), member by
member, so a member's outputs equal its solo model's to float rounding (tests/test_imdb_stacked.py):

    params: {SentimentLSTM parameter name: [M, *shape]}   tokens: [M, batch, seq] long   ->   [M, batch] probabilities

Two forwards: `stacked_lstm_probs(..., train=True)` keeps what backward needs (a custom autograd
function whose backward runs the time loop in reverse, and gets the recurrent weights' gradient in one
batched matmul over all steps instead of 500 accumulations), layer by layer; the evaluation forward
keeps nothing and advances all layers together, so its memory does not grow with the sequence (a
whole split is one forward). On CUDA the two cell functions are torch.compile'd (each a single kernel
instead of about ten): unfused, a CUDA-graphed step of 9 members launches ~30,000 kernels.
"""
import functools

import torch
import torch.nn.functional as F


def _cell_forward(x_gates: torch.Tensor, h_gates: torch.Tensor, c_prev: torch.Tensor):
    """One LSTM step from the gates' two parts (input projection + biases, recurrent projection)
    -> (h, c, activations [i | f | g | o] after their nonlinearities)."""
    i, f, g, o = (x_gates + h_gates).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c_prev + i * g
    return o * torch.tanh(c), c, torch.cat([i, f, g, o], dim=-1)


def _cell_backward(dh_out: torch.Tensor, dh_next: torch.Tensor, dc_next: torch.Tensor, acts: torch.Tensor,
                   c_prev: torch.Tensor, c: torch.Tensor):
    """_cell_forward's backward: the gradient reaching h from the layer's output and from the next step,
    and reaching c from the next step -> (the pre-activation gates' gradient, c_prev's gradient)."""
    i, f, g, o = acts.chunk(4, dim=-1)
    dh = dh_out + dh_next
    tanh_c = torch.tanh(c)
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
    d_gates = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                         dh * tanh_c * o * (1 - o)], dim=-1)
    return d_gates, dc * f


@functools.cache
def _cells(device_type: str):
    """(forward, backward) cell functions: compiled on CUDA (fused), plain elsewhere."""
    if device_type != "cuda":
        return _cell_forward, _cell_backward
    compile_ = functools.partial(torch.compile, fullgraph=True, dynamic=False)
    return compile_(_cell_forward), compile_(_cell_backward)


class _Recurrence(torch.autograd.Function):
    """One LSTM layer's time loop for M members: x_gates [T, M, B, 4H] (the input projection plus both
    biases), w_hh [M, 4H, H] -> h for every step [T, M, B, H], from a zero state."""

    @staticmethod
    def forward(ctx, x_gates: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        cell, _ = _cells(x_gates.device.type)
        steps, m, batch, gates = x_gates.shape
        h = c = x_gates.new_zeros(m, batch, gates // 4)
        w_t = w_hh.transpose(1, 2)
        hs, cs, acts = [h], [c], []
        for t in range(steps):
            h, c, a = cell(x_gates[t], torch.bmm(h, w_t), c)
            hs.append(h), cs.append(c), acts.append(a)
        hs = torch.stack(hs)  # [T + 1, M, B, H]: h_0 = 0, ..., h_T
        ctx.save_for_backward(w_hh, hs, torch.stack(cs), torch.stack(acts))
        return hs[1:]

    @staticmethod
    def backward(ctx, d_hs: torch.Tensor):
        w_hh, hs, cs, acts = ctx.saved_tensors
        _, cell_backward = _cells(d_hs.device.type)
        steps, m, batch, gates = acts.shape
        dh = dc = d_hs.new_zeros(m, batch, gates // 4)
        d_gates = [None] * steps
        for t in reversed(range(steps)):
            d_gates[t], dc = cell_backward(d_hs[t], dh, dc, acts[t], cs[t], cs[t + 1])
            dh = torch.bmm(d_gates[t], w_hh)
        d_gates = torch.stack(d_gates)  # [T, M, B, 4H]
        # dW_hh[m] = sum over steps and rows of d_gates_t^T h_{t-1}: one batched matmul
        by_member = d_gates.permute(1, 3, 0, 2).reshape(m, gates, steps * batch)
        h_prev = hs[:-1].transpose(0, 1).reshape(m, steps * batch, -1)
        return d_gates, torch.bmm(by_member, h_prev)


def _input_gates(x: torch.Tensor, p: dict, layer: int) -> torch.Tensor:
    """x [T, M, B, in] @ W_ih[m].T + b_ih[m] + b_hh[m] -> [T, M, B, 4H]."""
    bias = p[f"lstm.bias_ih_l{layer}"] + p[f"lstm.bias_hh_l{layer}"]
    return torch.einsum("tmbi,mgi->tmbg", x, p[f"lstm.weight_ih_l{layer}"]) + bias[:, None, :]


def _embed(p: dict, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [M, B, T] -> each member's embeddings, time first [T, M, B, E]."""
    emb = p["embedding.weight"]  # [M, vocab, E]
    m, vocab, dim = emb.shape
    offsets = torch.arange(m, device=tokens.device)[:, None, None] * vocab
    return F.embedding((tokens + offsets).permute(2, 0, 1), emb.reshape(m * vocab, dim))


def _num_layers(p: dict) -> int:
    return sum(1 for name in p if name.startswith("lstm.weight_hh_l"))


def _last_hidden_train(p: dict, tokens: torch.Tensor) -> torch.Tensor:
    x = _embed(p, tokens)
    for layer in range(_num_layers(p)):
        x = _Recurrence.apply(_input_gates(x, p, layer), p[f"lstm.weight_hh_l{layer}"])
    return x[-1]


def _last_hidden_eval(p: dict, tokens: torch.Tensor) -> torch.Tensor:
    cell, _ = _cells(tokens.device.type)
    layers = _num_layers(p)
    m, batch, steps = tokens.shape
    hidden = p["lstm.weight_hh_l0"].shape[-1]
    w_ih = [p[f"lstm.weight_ih_l{k}"].transpose(1, 2) for k in range(layers)]
    w_hh = [p[f"lstm.weight_hh_l{k}"].transpose(1, 2) for k in range(layers)]
    bias = [(p[f"lstm.bias_ih_l{k}"] + p[f"lstm.bias_hh_l{k}"])[:, None, :] for k in range(layers)]
    h = [tokens.new_zeros(m, batch, hidden, dtype=w_hh[0].dtype) for _ in range(layers)]
    c = list(h)
    emb = p["embedding.weight"]
    offsets = torch.arange(m, device=tokens.device)[:, None] * emb.shape[1]
    for t in range(steps):
        x = F.embedding(tokens[:, :, t] + offsets, emb.reshape(-1, emb.shape[-1]))  # [M, B, E]
        for k in range(layers):
            h[k], c[k], _ = cell(torch.bmm(x, w_ih[k]) + bias[k], torch.bmm(h[k], w_hh[k]), c[k])
            x = h[k]
    return x


# torch.compile of a caller (a population's --compile) would unroll the time loops: they stay eager, their
# cells compiled as above
@torch.compiler.disable
def stacked_lstm_probs(p: dict, tokens: torch.Tensor, train: bool) -> torch.Tensor:
    """Every member's SentimentLSTM(tokens[m]) -> [M, B] probabilities of 'positive'. train: keep what
    backward needs (else no gradient flows). The LSTM runs in float32, as the solo run's under autocast
    on the CPU (its CUDA autocast would run cuDNN's in half precision: not offered for a population)."""
    with torch.autocast(tokens.device.type, enabled=False):
        p = {k: v.float() for k, v in p.items()}
        last = _last_hidden_train(p, tokens) if train else _last_hidden_eval(p, tokens)
        logits = torch.einsum("mbh,moh->mbo", last, p["fc.weight"]) + p["fc.bias"][:, None, :]
    return torch.sigmoid(logits).squeeze(-1)
