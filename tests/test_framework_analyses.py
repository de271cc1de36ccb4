"""The holes left in the Hugging Face and Lightning coverage (tests/test_frameworks.py,
tests/test_integrations.py): a ``LightningModule`` through every analysis against its dense
float64 Hessian, per-sample gradients and moved-parameter losses, the model checked untouched
after each call; and the CLI's other commands (critical, diagnose, train, batch noise, batch
landscape) on Hugging Face GPT-2 / BERT and Lightning problem files, against the library's own
calls on the same problem. Each part skips without its framework."""

from __future__ import annotations

import copy
import json
import math
import runpy
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdoctor as ld
from cases import ModelSnapshot

pytestmark = pytest.mark.usefixtures("one_thread")

LIGHTNING_MODULE = """
import lightning as L, torch, torch.nn.functional as F

class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def make():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Classifier(), F.cross_entropy, [(x[:6], y[:6]), (x[6:], y[6:])]
"""


@pytest.fixture(scope="module")
def lightning_problem(tmp_path_factory):
    pytest.importorskip("lightning")
    path = tmp_path_factory.mktemp("lightning") / "lightning_problem.py"
    path.write_text(LIGHTNING_MODULE)
    return path


def make(path):
    return runpy.run_path(str(path))["make"]()


def mean_loss(model, batches, dtype=torch.float64):
    n = sum(len(y) for _, y in batches)
    return sum(len(y) * F.cross_entropy(model(x.to(dtype)), y) for x, y in batches) / n


def dense_truth(model, batches):
    twin = copy.deepcopy(model).double()
    params = [p for p in twin.parameters() if p.requires_grad]
    g = torch.cat(
        [
            t.reshape(-1)
            for t in torch.autograd.grad(mean_loss(twin, batches), params, create_graph=True)
        ]
    )
    rows = [
        torch.cat([r.reshape(-1) for r in torch.autograd.grad(g[i], params, retain_graph=True)])
        for i in range(len(g))
    ]
    return torch.stack(rows).detach(), g.detach()


def test_lightning_module_through_every_analysis(lightning_problem):
    module, loss_fn, batches = make(lightning_problem)
    H, g = dense_truth(module, batches)
    exact = torch.linalg.eigvalsh(H)
    before = ModelSnapshot.take(module)

    op = ld.hessian(module, loss_fn, batches)
    assert torch.allclose((op @ torch.eye(op.num_params)).double(), H, atol=1e-5, rtol=1e-4)
    eig = ld.eigenpairs(op, k=2, which="both", progress=False)
    got = torch.tensor(sorted(eig.eigenvalues), dtype=torch.float64)
    assert torch.allclose(got, torch.cat([exact[:2], exact[-2:]]), atol=1e-5)
    tr = ld.trace(op, matvecs=op.num_params + 3, progress=False)
    assert abs(tr.estimate - float(exact.sum())) <= 4 * tr.standard_error + 1e-4
    point = ld.classify_critical_point(module, loss_fn, batches, progress=False)
    assert point.grad_norm == pytest.approx(float(g.norm()), rel=1e-5)
    assert point.kind == ("not_critical" if point.grad_norm > point.grad_tol else point.kind)
    before.assert_same(module, "curvature")

    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    d = ld.diagnose(
        module, loss_fn, batches, history=[1.0] * 40, optimizer=opt, verify=False, progress=False
    )
    twin = copy.deepcopy(module).double()
    assert d.measurements.loss == pytest.approx(float(mean_loss(twin, batches).detach()), rel=1e-5)
    assert d.measurements.grad_norm == pytest.approx(float(g.norm()), rel=1e-4)
    before.assert_same(module, "diagnose")

    # the noise scale against the per-sample gradients' |G|^2 and tr(Sigma), simulated spread
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    twin = copy.deepcopy(module).double()
    params = list(twin.parameters())
    per = torch.stack(
        [
            torch.cat(
                [
                    t.reshape(-1)
                    for t in torch.autograd.grad(
                        loss_fn(twin(x[i : i + 1].double()), y[i : i + 1]), params
                    )
                ]
            )
            for i in range(len(y))
        ]
    )
    mean = per.mean(0)
    g2, trace_sigma = float(mean @ mean), float(((per - mean) ** 2).sum(1).mean())
    gram, gen = per @ per.T, torch.Generator().manual_seed(5)

    def sq(b):
        idx = torch.randint(0, len(y), (4000, b), generator=gen)
        return gram[idx[:, :, None], idx[:, None, :]].sum((1, 2)) / b**2

    s_sq, b_sq = sq(2), sq(12)
    sim_g2, sim_tr = (12 * b_sq - 2 * s_sq) / 10, (s_sq - b_sq) / (1 / 2 - 1 / 12)
    noise = ld.gradient_noise_scale(
        module,
        loss_fn,
        batches,
        small_batch=2,
        big_batch=12,
        pairs=50,
        bootstrap=50,
        progress=False,
    )
    assert abs(noise.grad_norm_sq - g2) <= 4 * float(sim_g2.std()) / math.sqrt(50)
    assert abs(noise.trace_sigma - trace_sigma) <= 4 * float(sim_tr.std()) / math.sqrt(50)
    before.assert_same(module, "gradient_noise_scale")

    direction = [torch.full_like(p, 0.1) for p in module.parameters()]
    land = ld.landscape(module, loss_fn, batches, steps=3, directions=[direction], progress=False)
    for c, value in zip(land.coords, land.train_loss):
        moved = copy.deepcopy(module)
        with torch.no_grad():
            for p, d_ in zip(moved.parameters(), direction):
                p.add_(c * d_)
        assert value == pytest.approx(float(loss_fn(moved(x), y)), rel=1e-5)
    before.assert_same(module, "landscape")

    # the Monitor in a plain loop over the module: bit for bit the run without it
    def run(monitored):
        model = copy.deepcopy(module)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        mon = (
            ld.Monitor(
                model,
                loss_fn,
                batches,
                window=8,
                sharpness_every=2,
                sharpness_iters=3,
                doctor_share=None,
            )
            if monitored
            else None
        )
        for step in range(6):
            xb, yb = batches[step % 2]
            opt.zero_grad()
            loss = model.training_step((xb, yb), step)
            loss.backward()
            opt.step()
            if mon is not None:
                mon.step(loss, opt)
            states.append(copy.deepcopy(model))
        return model, mon

    states: list[nn.Module] = []
    plain, _ = run(False)
    states.clear()
    monitored, mon = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), monitored.parameters()))
    assert [s for s, _ in mon.record.sharpness] == [2, 4, 6]
    for step, estimate in mon.record.sharpness:  # a Rayleigh quotient of that step's Hessian
        spectrum = torch.linalg.eigvalsh(dense_truth(states[step - 1], batches)[0])
        assert float(spectrum[0]) - 1e-5 <= estimate <= float(spectrum[-1]) * (1 + 1e-5) + 1e-6


# -- the CLI on framework problem files ------------------------------------------------------------
HF_PROBLEMS = {
    "gpt2": """
        import torch, transformers

        def make():
            cfg = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=4, n_layer=1, n_head=2,
                                          n_inner=8, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                          bos_token_id=0, eos_token_id=0)
            torch.manual_seed(0)
            model = transformers.GPT2LMHeadModel(cfg)
            ids = torch.randint(1, 16, (6, 6), generator=torch.Generator().manual_seed(0))
            return model, None, [{"input_ids": ids[:3], "labels": ids[:3]}, {"input_ids": ids[3:], "labels": ids[3:]}]
        """,
    "bert": """
        import torch, transformers

        def make():
            cfg = transformers.BertConfig(vocab_size=16, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=8, max_position_embeddings=8, num_labels=3,
                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
            torch.manual_seed(0)
            model = transformers.BertForSequenceClassification(cfg)
            gen = torch.Generator().manual_seed(5)
            batches = []
            for n, length in ((3, 6), (3, 4)):
                ids = torch.randint(1, 16, (n, length), generator=gen)
                mask = torch.ones(n, length, dtype=torch.long)
                mask[0, length // 2:] = 0  # padding
                batches.append({"input_ids": ids * mask, "attention_mask": mask,
                                "labels": torch.randint(0, 3, (n,), generator=gen)})
            return model, None, batches
        """,
}


@pytest.mark.parametrize("name", ["gpt2", "bert", "lightning"])
def test_cli_commands_on_framework_problem_files(name, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lossdoctor.cli import main

    pytest.importorskip("lightning" if name == "lightning" else "transformers")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{name}_problem.py"
    path.write_text(LIGHTNING_MODULE if name == "lightning" else textwrap.dedent(HF_PROBLEMS[name]))
    (tmp_path / "history.json").write_text(json.dumps([1.1] * 30))

    def run(*args):
        result = CliRunner().invoke(main, [*args, "--problem", f"{path}:make", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    model, loss_fn, data = make(path)
    model.train()
    spectrum = run(
        "spectrum", "--k", "1", "--which", "largest", "--trace-matvecs", "0", "--no-density"
    )
    top = ld.eigenpairs(ld.hessian(model, loss_fn, data), k=1, progress=False)
    assert spectrum["eigenpairs"]["eigenvalues"][0] == pytest.approx(top.eigenvalues[0], rel=1e-4)
    critical = run("critical", "--k", "1")["critical"]
    point = ld.classify_critical_point(model, loss_fn, data, k=1, progress=False)
    assert critical["kind"] == point.kind
    assert critical["grad_norm"] == pytest.approx(point.grad_norm, rel=1e-6)
    diagnosis = run("diagnose", "--history", "history.json", "--lr", "0.01", "--no-verify")
    d = ld.diagnose(
        model,
        loss_fn,
        data,
        history=[1.1] * 30,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        verify=False,
        progress=False,
    )
    assert diagnosis["diagnosis"]["cause"] == d.cause
    trained = run("train", "--lr", "0.01", "--steps", "4", "--window", "8")
    assert len(trained["losses"]) == 4 and all(map(math.isfinite, trained["losses"]))
    noise = run("batch", "noise", "--small-batch", "2", "--big-batch", "5", "--pairs", "4")
    expected = ld.gradient_noise_scale(
        model, loss_fn, data, small_batch=2, big_batch=5, pairs=4, progress=False
    )
    assert noise["b_simple"] == pytest.approx(expected.b_simple, rel=1e-6)
    land = run("batch", "landscape", "--steps", "3", "--span", "0.5")
    assert land["center_loss"] == pytest.approx(
        ld.landscape(model, loss_fn, data, steps=3, span=0.5, progress=False).center_loss, rel=1e-6
    )
