"""Batches and outputs as frameworks make them: dict batches carrying their labels, flat tuples,
dicts passed as keywords or as one argument, models computing their own loss (``loss_fn=None``)
and losses on the whole batch. Ground truth: dense float64 Hessians from ``torch.func`` of the
same mean loss written out by hand, on an MLP and on tiny Hugging Face GPT-2 / BERT built from
configs (no download)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdoctor as ld
from cases import double_backward_hessian
from lossdoctor.data import Batches, iter_batches, loss_on_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], training: bool) -> None:
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training


def true_hessian(model: nn.Module, mean_loss) -> torch.Tensor:
    """The dense Hessian of ``mean_loss(model)`` w.r.t. the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return double_backward_hessian(lambda: mean_loss(model), params)[0]


def dense(op: ld.HessianOperator) -> torch.Tensor:
    return op @ torch.eye(op.num_params, dtype=torch.float64)


# -- batch forms on a plain MLP ----------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.a(x) + self.b(z)))


class DictArgument(TwoInputs):
    """``forward`` takes the dict itself, as one argument."""

    def forward(self, batch: dict) -> torch.Tensor:  # type: ignore[override]
        return super().forward(batch["x"], batch["z"])


class OwnLoss(TwoInputs):
    """Computes its loss when given labels, returning a dict like HF models."""

    def forward(self, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> dict:  # type: ignore[override]
        logits = super().forward(x, z)
        return {
            "logits": logits,
            "loss": None if labels is None else F.cross_entropy(logits, labels),
        }


@pytest.fixture(scope="module")
def xyz():
    gen = torch.Generator().manual_seed(0)
    x, z = (
        torch.randn(10, 3, generator=gen, dtype=torch.float64),
        torch.randn(10, 2, generator=gen, dtype=torch.float64),
    )
    y = torch.randint(0, 3, (10,), generator=gen)
    return x, z, y


def test_every_batch_form_gives_the_same_hessian(xyz):
    x, z, y = xyz
    torch.manual_seed(1)
    two, by_dict, own = TwoInputs().double(), DictArgument().double(), OwnLoss().double()
    by_dict.load_state_dict(two.state_dict())
    own.load_state_dict(two.state_dict())
    truth = true_hessian(two, lambda m: F.cross_entropy(m(x, z), y))

    def batch_loss(out, batch):  # a loss on the whole batch, recognized by its parameter's name
        return F.cross_entropy(out, batch["y"])

    forms = {
        "pair with tuple inputs": (
            two,
            F.cross_entropy,
            [((x[:6], z[:6]), y[:6]), ((x[6:], z[6:]), y[6:])],
        ),
        "flat tuples": (two, F.cross_entropy, [(x[:6], z[:6], y[:6]), (x[6:], z[6:], y[6:])]),
        "one flat tuple": (two, F.cross_entropy, (x, z, y)),
        "dict inputs as keywords": (two, F.cross_entropy, [({"x": x, "z": z}, y)]),
        "dict with labels, forward without them": (
            two,
            F.cross_entropy,
            {"x": x, "z": z, "labels": y},
        ),
        "dict as one argument (detected)": (by_dict, F.cross_entropy, [({"x": x, "z": z}, y)]),
        "dict as one argument (chosen)": (
            by_dict,
            F.cross_entropy,
            Batches([{"x": x, "z": z, "label": y}], call="positional"),
        ),
        "own loss (loss_fn=None)": (
            own,
            None,
            [{"x": x[:6], "z": z[:6], "labels": y[:6]}, {"x": x[6:], "z": z[6:], "labels": y[6:]}],
        ),
        "loss on the batch (by name)": (by_dict, batch_loss, [{"x": x, "z": z, "y": y}]),
        "loss on the batch (marked)": (
            two,
            loss_on_batch(lambda out, b: F.cross_entropy(out, b[2])),
            (x, z, y),
        ),
    }
    for what, (model, loss_fn, data) in forms.items():
        before = state(model)
        op = ld.hessian(model, loss_fn, data)
        assert op.num_samples == 10, what
        assert torch.allclose(dense(op), truth, atol=1e-10, rtol=1e-9), what
        assert_untouched(model, before, True)


def test_dict_batches_without_labels_need_a_loss_that_does_not_want_targets(xyz):
    x, z, y = xyz
    model = TwoInputs().double()
    ((inputs, targets),) = iter_batches([{"x": x, "z": z}])
    assert targets.shape == (10, 0)
    with pytest.raises(ValueError, match="no targets.*loss_fn=None.*loss_fn\\(outputs, batch\\)"):
        ld.hessian(model, F.cross_entropy, [{"x": x, "z": z}])
    with pytest.raises(
        ValueError, match="loss_fn=None takes the loss the model computes itself.*labels"
    ):
        ld.hessian(model, None, [((x, z), y)])
    with pytest.raises(ValueError, match="whose loss is None"):
        ld.hessian(OwnLoss().double(), None, {"x": x, "z": z})
    with pytest.raises(ValueError, match="no key 'target'"):
        list(iter_batches(Batches([{"x": x, "z": z}], labels="target")))
    with pytest.raises(ValueError, match="call must be one of"):
        Batches([(x, y)], call="kwargs")


def test_a_dict_the_model_cannot_take_names_the_choice():
    model = DictArgument().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="call='positional'"):
        ld.hessian(
            model,
            F.cross_entropy,
            Batches([({"x": x, "z": x[:, :2]}, torch.zeros(4).long())], call="keywords"),
        )


def test_merged_dict_batches_pad_under_the_mask():
    from lossdoctor.data import merge_batches, take

    a = {
        "ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.ones(2, 3, dtype=torch.long),
    }
    b = {
        "ids": torch.full((1, 5), 2),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
        "labels": torch.full((1, 5), 2),
    }
    x, y = merge_batches(list(iter_batches([a, b])))
    assert x["ids"].shape == (3, 5) and y is x["labels"]
    assert x["attention_mask"][:2, 3:].sum() == 0 and (x["labels"][:2, 3:] == -100).all()
    part, labels = take(x, y, torch.tensor([2]))
    assert torch.equal(part["ids"], b["ids"]) and torch.equal(labels, b["labels"])
    no_mask = [{"ids": a["ids"], "labels": a["labels"]}, {"ids": b["ids"], "labels": b["labels"]}]
    with pytest.raises(ValueError, match="different lengths.*attention_mask"):
        merge_batches(list(iter_batches(no_mask)))


# -- tiny Hugging Face models from configs ------------------------------------------------------
VOCAB = 16


def hf():
    """transformers, or a skip of the test asking for it (the MLP tests above run without it)."""
    return pytest.importorskip("transformers")


def tiny_gpt2() -> nn.Module:
    transformers = hf()
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=8,
        n_embd=4,
        n_layer=1,
        n_head=2,
        n_inner=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def tiny_bert() -> nn.Module:
    transformers = hf()
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def lm_batches():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (6, 6), generator=gen)
    return ids, [
        {"input_ids": ids[:4], "labels": ids[:4]},
        {"input_ids": ids[4:], "labels": ids[4:]},
    ]


def shifted_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_gpt2_own_loss_is_the_shifted_cross_entropy_and_its_hessian_is_right():
    model = tiny_gpt2().double()
    ids, batches = lm_batches()
    before = state(model)
    own = ld.hessian(model, None, batches)
    by_hand = ld.hessian(
        model,
        lambda out, y: shifted_ce(out.logits, y),
        [(b["input_ids"], b["labels"]) for b in batches],
    )
    # the operator's loss: batch means weighted by samples (4 and 2 of the same length here)
    truth = true_hessian(
        model,
        lambda m: (
            (
                4 * shifted_ce(m(input_ids=ids[:4]).logits, ids[:4])
                + 2 * shifted_ce(m(input_ids=ids[4:]).logits, ids[4:])
            )
            / 6
        ),
    )
    assert abs(own.loss - by_hand.loss) < 1e-6 * by_hand.loss  # HF computes its loss in float32
    h_hand = dense(by_hand)
    assert torch.allclose(h_hand, truth, atol=1e-11, rtol=1e-9)
    v = torch.randn(
        own.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    err = (own @ v - truth @ v).norm() / (truth @ v).norm()
    assert err < 1e-5, err  # float32 loss inside HF: products agree to float32 precision
    assert_untouched(model, before, model.training)


def bert_batches():
    gen = torch.Generator().manual_seed(5)
    out = []
    for n, length, real in ((3, 6, (6, 4, 2)), (2, 4, (4, 3))):
        ids = torch.randint(1, VOCAB, (n, length), generator=gen)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, r in enumerate(real):
            mask[i, :r] = 1
        ids = ids * mask  # 0: the pad token
        out.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "labels": torch.randint(0, 3, (n,), generator=gen),
            }
        )
    return out


def test_bert_with_padding_matches_the_dense_hessian_and_merged_batches():
    model = tiny_bert().double()
    batches = bert_batches()
    before = state(model)
    op = ld.hessian(model, None, batches)
    truth = true_hessian(
        model,
        lambda m: (
            sum(
                len(b["labels"])
                * F.cross_entropy(
                    m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                    b["labels"],
                )
                for b in batches
            )
            / 5
        ),
    )
    assert torch.allclose(dense(op), truth, atol=1e-11, rtol=1e-8)
    # merged into one batch (padded under the mask), the per-sample mean loss is the same
    land = ld.landscape(model, None, batches, steps=3, span=0.1)
    assert abs(land.train_loss[1] - op.loss) < 1e-6
    assert_untouched(model, before, model.training)


def test_a_plain_loss_on_hf_outputs_says_to_use_loss_fn_none():
    model = tiny_gpt2()
    ids, _ = lm_batches()
    with pytest.raises(ValueError, match="pass loss_fn=None.*outputs.logits"):
        ld.hessian(model, F.cross_entropy, [(ids, ids)])


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_bert], ids=["gpt2", "bert"])
def test_every_analysis_takes_hf_models_and_batches(build):
    model = build()
    batches = lm_batches()[1] if build is tiny_gpt2 else bert_batches()
    model.train()
    before = state(model)
    op = ld.hessian(model, None, batches)
    full = torch.linalg.eigvalsh(dense(op).double())
    eig = ld.eigenpairs(op, k=2, max_matvecs=120)
    assert torch.allclose(
        torch.tensor(sorted(eig.eigenvalues), dtype=torch.float64), full[-2:], rtol=1e-3, atol=1e-5
    )
    tr = ld.trace(op, matvecs=30)
    assert abs(tr.estimate - float(full.sum())) <= 4 * tr.standard_error + 1e-4 * float(
        full.abs().sum()
    )
    cp = ld.classify_critical_point(model, None, batches, k=2, dense=False, max_matvecs=80)
    n = sum(len(b["labels"]) for b in batches)  # the gradient of the sample-weighted mean loss
    mean = sum(len(b["labels"]) * model(**b).loss for b in batches) / n
    truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(mean, list(model.parameters()))])
    model.zero_grad(set_to_none=True)
    assert cp.grad_norm == pytest.approx(float(truth.norm()), rel=1e-4)
    assert cp.kind == ("not_critical" if cp.grad_norm > cp.grad_tol else cp.kind)
    noise = ld.gradient_noise_scale(
        model, None, batches, small_batch=2, big_batch=4, pairs=3, bootstrap=20
    )
    assert noise.pairs == 3
    land = ld.landscape(model, None, batches, steps=3, span=0.1)
    assert all(v == v for v in land.train_loss)
    timing = ld.time_batch_sizes(model, None, batches, [1, 2], repeats=1, warmup=0)
    assert timing.batch_sizes == [1, 2]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = ld.diagnose(
        model, None, batches, history={"losses": [2.0] * 40}, optimizer=opt, verify=False, budget=8
    )
    assert d.cause
    assert_untouched(model, before, True)
    # the Monitor inside a plain loop on the same batches
    monitor = ld.Monitor(
        model, None, batches, window=8, sharpness_every=4, sharpness_iters=2, doctor_share=None
    )  # the estimates on every 4th step, not when the budget can pay
    for step in range(8):
        out = model(**batches[step % 2])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        monitor.step(out.loss, opt)
    assert len(monitor.record.losses) == 8 and monitor.record.sharpness


PROBLEM_FILE = """
import torch, transformers

def make():
    cfg = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=4, n_layer=1, n_head=2, n_inner=8,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(1, 16, (6, 6), generator=torch.Generator().manual_seed(0))
    return model, None, [{"input_ids": ids[:3], "labels": ids[:3]}, {"input_ids": ids[3:], "labels": ids[3:]}]
"""


def test_cli_takes_a_hf_problem_file_with_loss_fn_none(tmp_path, monkeypatch):
    import json

    hf()
    from click.testing import CliRunner

    from lossdoctor.cli import main

    monkeypatch.chdir(tmp_path)  # the density plot is written here
    path = tmp_path / "gpt2_problem.py"
    path.write_text(PROBLEM_FILE)
    result = CliRunner().invoke(
        main, ["spectrum", "--problem", f"{path}:make", "--k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    eig = json.loads(result.output)
    model, _, batches = __import__("runpy").run_path(str(path))["make"]()
    op = ld.hessian(model, None, batches)
    top = torch.linalg.eigvalsh(dense(op).double())[-2:]
    assert eig["num_params"] == op.num_params and eig["loss"] == pytest.approx(op.loss)
    assert sorted(eig["eigenpairs"]["eigenvalues"])[-2:] == pytest.approx(
        top.tolist(), rel=1e-3, abs=1e-5
    )


def import_or_skip(name: str):
    """``pytest.importorskip`` for packages that fail with other errors than ImportError (PyPI
    torchvision beside torch 2.13: 'operator torchvision::nms does not exist')."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any failure to import means: not available here
        pytest.skip(f"{name} does not import here: {type(err).__name__}: {str(err)[:80]}")


def symmetric_products(op: ld.HessianOperator) -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(op.num_params, generator=gen), torch.randn(op.num_params, generator=gen)
    hu, hv = op @ u, op @ v
    assert abs(float(u @ hv) - float(v @ hu)) <= 1e-3 * (float(u.norm() * hv.norm()) + 1e-12)


def finite_difference_product(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    v: torch.Tensor,
    mode: str,
    eps: float = 1e-4,
) -> torch.Tensor:
    """(g(theta + eps v) - g(theta - eps v)) / 2 eps from float64 gradients of a copy of the model
    with torch's own kernels (first derivatives only), in ``mode``."""
    import copy

    twin = copy.deepcopy(model).double().train(mode == "train")
    params = [p for p in twin.parameters() if p.requires_grad]
    theta = [p.detach().clone() for p in params]
    steps = torch.split(v.double(), [p.numel() for p in params])

    def grad_at(sign: float) -> torch.Tensor:
        with torch.no_grad():
            for p, t, s in zip(params, theta, steps):
                p.copy_(t + sign * eps * s.reshape(p.shape))
        loss = F.cross_entropy(twin(x.double()), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    return (grad_at(1.0) - grad_at(-1.0)) / (2 * eps)


def check_products_and_top_pair(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str
) -> None:
    """Products against finite differences of float64 gradients, and the top eigenpair's residual
    and value against products and a Rayleigh quotient computed here; the model untouched."""
    before, training = state(net), net.training
    op = ld.hessian(net, F.cross_entropy, (x, y), mode=mode)
    assert op.mode == mode
    symmetric_products(op)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(1))
    v /= v.norm()  # a step of 1e-4 in all: ReLU kinks stay out of reach of the differences
    hv = (op @ v).double()
    fd = finite_difference_product(net, x, y, v, mode)
    assert float((hv - fd).norm()) <= 2e-3 * float(fd.norm()), float((hv - fd).norm() / fd.norm())
    top = ld.eigenpairs(op, k=1, tol=1e-3, progress=False)
    u = top.eigenvectors[:, 0]
    hu = (op @ u.float()).double()
    assert float(u @ hu) == pytest.approx(top.eigenvalues[0], rel=1e-3)
    assert float((hu - top.eigenvalues[0] * u).norm()) == pytest.approx(
        top.residual_norms[0], rel=0.05, abs=1e-4
    )
    assert top.mode == mode
    assert_untouched(net, before, training)


def test_torchvision_net_batchnorm_in_train_mode():
    models = import_or_skip("torchvision.models")
    torch.manual_seed(0)
    # MobileNetV3: BatchNorm, hardswish and hardsigmoid (torch's kernels for those two have no
    # double backward; the operator swaps in relu6 forms while it computes products)
    net = models.mobilenet_v3_small(num_classes=3, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 1])
    check_products_and_top_pair(net, x, y, "train")  # batch statistics, as trained
    assert (
        F.hardswish is torch.nn.functional.hardswish
        and F.hardswish.__module__ == "torch.nn.functional"
    )


def test_torchvision_resnet18_batchnorm_in_train_mode():
    """The issue's ResNet-18 (11M parameters, 20 BatchNorms) in train mode: products against
    finite differences and the top pair's residual, the model untouched."""
    models = import_or_skip("torchvision.models")
    torch.manual_seed(0)
    net = models.resnet18(num_classes=3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 1])
    check_products_and_top_pair(net, x, y, "train")


def test_timm_vit():
    timm = import_or_skip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 1])
    check_products_and_top_pair(net, x, y, "eval")
    op = ld.hessian(net, F.cross_entropy, (x, y))
    assert ld.trace(op, matvecs=6, progress=False).matvecs == 6


def test_checkup_on_padded_bert_runs_every_section():
    model = tiny_bert()
    before = state(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    page = ld.checkup(model, None, bert_batches(), history=[2.0] * 60, optimizer=opt, budget=30)
    assert len(page.sections) >= 8 and all(s.status == "done" for s in page.sections)
    assert_untouched(model, before, model.training)
