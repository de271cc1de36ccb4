"""Weight-decay groups and the L2 penalty on models with BatchNorm, LayerNorm, GroupNorm, RMSNorm,
embeddings, tied weights and frozen parameters; the penalty's value and gradient by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld


class TinyLM(nn.Module):
    """A one-block Transformer language model whose output layer shares the embedding weight."""

    def __init__(self, vocab: int = 11, d: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(5, d))
        self.block = nn.TransformerEncoderLayer(
            d, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens):
        h = self.block(self.embed(tokens) + self.pos[: tokens.shape[1]])
        return self.head(self.final_norm(h))


class HandRMSNorm(nn.Module):
    """An RMSNorm as LLM code bases write it (not torch's class): found by its class name."""

    def __init__(self, d: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.scale * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def _names(groups):
    return {g["weight_decay"]: set(g["param_names"]) for g in groups}


def test_batchnorm_cnn_groups():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
        nn.BatchNorm1d(3),
    )
    groups = ld.weight_decay_groups(model, 0.01)
    assert _names(groups) == {
        0.01: {"0.weight", "4.weight"},
        0.0: {"0.bias", "1.weight", "1.bias", "4.bias", "5.weight", "5.bias"},
    }
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=0.5)  # groups override the default
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_norm_layers_found_by_type_not_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.gn = nn.GroupNorm(2, 4)  # named without "norm"
            self.ln = nn.LayerNorm(4)
            self.inorm = nn.InstanceNorm1d(4, affine=True)
            self.rms = nn.RMSNorm(4)
            self.hand = HandRMSNorm(4)
            self.b = nn.Linear(4, 2, bias=False)

    groups = _names(ld.weight_decay_groups(Net(), 0.1))
    assert groups[0.1] == {"a.weight", "b.weight"}
    assert groups[0.0] == {
        "a.bias",
        "gn.weight",
        "gn.bias",
        "ln.weight",
        "ln.bias",
        "inorm.weight",
        "inorm.bias",
        "rms.weight",
        "hand.scale",
    }


def test_tied_transformer_lm():
    model = TinyLM()
    groups = ld.weight_decay_groups(model, 0.1)
    decayed, kept = _names(groups)[0.1], _names(groups)[0.0]
    all_params = list(model.parameters())  # torch lists a tied parameter once
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len(all_params) == len({id(p) for p in listed})
    assert "embed.weight" in decayed and "head.weight" not in decayed | kept
    assert {
        "final_norm.weight",
        "block.norm1.weight",
        "block.self_attn.in_proj_bias",
        "block.linear1.bias",
    } <= kept
    assert "block.self_attn.in_proj_weight" in decayed and "pos" in decayed
    # excluding the tied weight under either of its names excludes the one parameter
    for name in ("head.weight", "embed.weight"):
        g = _names(ld.weight_decay_groups(model, 0.1, exclude=("bias", "norm", name)))
        assert "embed.weight" in g[0.0] and "embed.weight" not in g[0.1]
    g = _names(ld.weight_decay_groups(model, 0.1, exclude=("bias", "norm", "embedding", "pos")))
    assert {"embed.weight", "pos"} <= g[0.0]
    # the optimizer accepts them and trains
    opt = torch.optim.AdamW(groups, lr=1e-2)
    tokens = torch.randint(0, 11, (3, 5))
    loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    opt.step()


def test_user_names_globs_and_1d_keyword():
    model = TinyLM()
    g = _names(ld.weight_decay_groups(model, 0.1, exclude=("block.*",)))
    assert not any(n.startswith("block.") for n in g[0.1])
    assert "final_norm.weight" in g[0.1]  # only what was listed is excluded
    g = _names(ld.weight_decay_groups(model, 0.1, exclude=("1d",)))
    assert all(dict(model.named_parameters())[n].dim() >= 2 for n in g[0.1])
    assert _names(ld.weight_decay_groups(model, 0.1, exclude=()))[0.1] == {
        n for n, _ in model.named_parameters()
    }


def test_frozen_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    groups = ld.weight_decay_groups(model, 0.1)
    assert _names(groups) == {0.1: {"1.weight"}, 0.0: {"1.bias"}}
    groups = ld.weight_decay_groups(model, 0.1, trainable_only=False)
    assert _names(groups) == {0.1: {"0.weight", "1.weight"}, 0.0: {"0.bias", "1.bias"}}
    # the penalty covers trainable weights only
    assert float(ld.l2_penalty(model, 2.0).detach()) == pytest.approx(
        float(model[1].weight.detach().pow(2).sum())
    )
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ld.weight_decay_groups(model, 0.1)


def test_penalty_value_and_gradient_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    gamma = 0.3
    penalty = ld.l2_penalty(model, gamma)
    w1, w2 = model[0].weight, model[2].weight
    by_hand = 0.5 * gamma * (w1.detach().pow(2).sum() + w2.detach().pow(2).sum())
    assert float(penalty.detach()) == pytest.approx(float(by_hand), rel=1e-6)
    penalty.backward()
    assert torch.allclose(w1.grad, gamma * w1.detach())
    assert torch.allclose(w2.grad, gamma * w2.detach())
    for p in (model[0].bias, model[1].weight, model[1].bias, model[2].bias):
        assert p.grad is None  # not in the penalty at all
    # biases penalized too: the lecture's variant with every parameter
    everything = ld.l2_penalty(model, gamma, exclude=())
    assert float(everything.detach()) == pytest.approx(
        0.5 * gamma * sum(float(p.detach().pow(2).sum()) for p in model.parameters()), rel=1e-6
    )


def test_penalty_counts_tied_weights_once_and_matches_sgd_weight_decay():
    model = TinyLM()
    p = ld.l2_penalty(model, 1.0, exclude=("bias", "norm"))
    decayed = ld.weight_decay_groups(model, 1.0)[0]["params"]
    assert float(p.detach()) == pytest.approx(
        0.5 * sum(float(w.detach().pow(2).sum()) for w in decayed), rel=1e-6
    )
    # an SGD step on loss + penalty equals an SGD step with weight_decay=gamma on the same groups
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    b = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(6, 3), torch.randn(6, 1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    (F.mse_loss(a(x), y) + ld.l2_penalty(a, 0.2)).backward()
    opt_a.step()
    opt_b = torch.optim.SGD(ld.weight_decay_groups(b, 0.2), lr=0.1)
    F.mse_loss(b(x), y).backward()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_penalty_dtype_and_no_weights():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).double()
    assert ld.l2_penalty(model, 0.1).dtype == torch.float64
    only_norm = nn.LayerNorm(3)
    zero = ld.l2_penalty(only_norm, 0.1)
    assert float(zero.detach()) == 0.0 and zero.dim() == 0


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda m: ld.weight_decay_groups(m, -0.1), ValueError, "weight_decay"),
        (lambda m: ld.l2_penalty(m, -1.0), ValueError, "gamma"),
        (
            lambda m: ld.l2_penalty(m, "0.1"),
            TypeError,
            "gamma must be a finite number >= 0, got '0.1'",
        ),
        (
            lambda m: ld.l2_penalty(m, float("nan")),
            ValueError,
            "gamma must be a finite number >= 0, got nan",
        ),
        (lambda m: ld.weight_decay_groups(m, 0.1, exclude=("0.wieght",)), ValueError, "match no"),
        (lambda m: ld.weight_decay_groups(m, 0.1, exclude=(3,)), TypeError, "sequence of strings"),
        (lambda m: ld.weight_decay_groups("model", 0.1), TypeError, "torch.nn.Module"),
    ],
)
def test_bad_input(call, error, match):
    model = nn.Sequential(nn.Linear(2, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        call(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
