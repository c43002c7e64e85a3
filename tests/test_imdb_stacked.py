"""The stacked LSTM (repro/tasks/imdb_stacked.py) against each member's own SentimentLSTM (nn.LSTM)."""
import pytest
import torch

from repro.tasks import imdb_stacked
from repro.tasks.imdb import SentimentLSTM
from repro.tasks.imdb_stacked import stacked_lstm_probs


@pytest.fixture
def members():
    """Three small models (their parameters x3, saturating as the paper's x6 do) and their tokens."""
    torch.manual_seed(0)
    models = [SentimentLSTM(30, embedding_dim=8, hidden_dim=12, num_layers=2) for _ in range(3)]
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.mul_(3)
    tokens = torch.randint(0, 30, (3, 5, 17))
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
              for name, _ in models[0].named_parameters()}
    return models, tokens, params


@pytest.mark.parametrize("train", [True, False])
def test_probabilities_are_each_members_own(members, train):
    models, tokens, params = members
    expected = torch.stack([m(tokens[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(stacked_lstm_probs(params, tokens, train=train), expected, atol=2e-7, rtol=1e-6)


def test_gradients_are_each_members_own(members):
    """The custom backward (reverse time loop, the recurrent weights' gradient in one batched matmul)
    against autograd through nn.LSTM, for a loss weighting every output differently."""
    models, tokens, params = members
    weights = torch.randn(3, 5)
    (stacked_lstm_probs(params, tokens, train=True) * weights).sum().backward()
    sum((m(tokens[i]) * weights[i]).sum() for i, m in enumerate(models)).backward()
    for name, stacked in params.items():
        expected = torch.stack([dict(m.named_parameters())[name].grad for m in models])
        torch.testing.assert_close(stacked.grad, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_compiled_cells_compute_the_plain_cells():
    """What CUDA runs (torch.compile'd cells) against the plain functions, here compiled for the CPU."""
    forward, backward = (torch.compile(f, fullgraph=True, dynamic=False)
                         for f in (imdb_stacked._cell_forward, imdb_stacked._cell_backward))
    g = torch.Generator().manual_seed(1)
    x_gates, h_gates = torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 16, generator=g)
    c_prev = torch.randn(2, 3, 4, generator=g)
    for got, want in zip(forward(x_gates, h_gates, c_prev), imdb_stacked._cell_forward(x_gates, h_gates, c_prev)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    h, c, acts = imdb_stacked._cell_forward(x_gates, h_gates, c_prev)
    args = (torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g),
            acts, c_prev, c)
    for got, want in zip(backward(*args), imdb_stacked._cell_backward(*args)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
