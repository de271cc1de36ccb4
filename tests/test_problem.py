"""Problems: built-ins, the user's own ``module:function``, and checkpoints."""

from __future__ import annotations

import textwrap

import pytest
import torch

import lossdoctor as ld
from cases import ModelSnapshot

USER_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F
    import lossdoctor as ld

    def data():
        g = torch.Generator().manual_seed(0)
        return torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def as_problem(width=4):
        return ld.Problem(model(), F.cross_entropy, data(), name="mine", info={"width": width})

    def as_triple():
        return model(), F.cross_entropy, data()

    def as_quadruple():
        return model(), nn.CrossEntropyLoss(), [data()], data()

    def wrong():
        return 42
""")


class Opaque:
    """A pickled object: refused by weights_only loading."""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_problem_file.py"
    path.write_text(USER_FILE)
    return path


def test_lecture_saddle():
    p = ld.load_problem("lecture-saddle")
    assert p.name == "lecture-saddle"
    op = ld.hessian(p.model, p.loss_fn, p.train_data)
    loss, grad = op.gradient()
    assert loss == pytest.approx(1.0) and torch.equal(grad, torch.zeros(2))
    moved = ld.load_problem("lecture-saddle")
    moved.model.w1.data.fill_(0.5)
    moved.model.w2.data.fill_(2.0)  # w1*w2 = 1: on the valley of minima, loss 0
    assert ld.hessian(moved.model, moved.loss_fn, moved.train_data).loss == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["mnist1d-mlp", "mnist1d-cnn"])
def test_mnist1d_builtins(name, tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.getbasetemp() / "mnist1d-cache"  # shared: generated once
    monkeypatch.setenv("LOSSDOCTOR_CACHE", str(tmp_path))
    p = ld.load_problem(name, num_train=60, num_test=20, batch_size=25)
    sizes = [len(y) for _, y in p.train_data]
    assert sizes == [25, 25, 10]
    x, y = p.train_data[0]
    assert x.shape == (25, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) <= 9 and sum(len(t) for _, t in p.test_data) == 20
    out = p.model(x)
    assert out.shape == (25, 10)
    assert list(tmp_path.glob("mnist1d-60-20-*.npz"))  # cached for the next run


def test_unknown_problem_lists_builtins():
    with pytest.raises(
        ValueError, match=r"unknown problem 'nope'.*lecture-saddle.*module:function"
    ):
        ld.load_problem("nope")
    with pytest.raises(ValueError, match="bad options for problem 'lecture-saddle'"):
        ld.load_problem("lecture-saddle", colour="red")


def test_user_file_function(user_file):
    p = ld.load_problem(f"{user_file}:as_problem", width=7)
    assert p.name == "mine" and p.info["width"] == 7
    triple = ld.load_problem(f"{user_file}:as_triple")
    assert triple.test_data is None and triple.name.endswith(":as_triple")
    quad = ld.load_problem(f"{user_file}:as_quadruple")
    assert quad.test_data is not None
    H = ld.dense_hessian(triple.model, triple.loss_fn, triple.train_data)
    assert torch.allclose(H, ld.dense_hessian(quad.model, quad.loss_fn, quad.train_data), atol=1e-6)
    with pytest.raises(TypeError, match="returned int.*Problem or a tuple"):
        ld.load_problem(f"{user_file}:wrong")
    with pytest.raises(ValueError, match="no function 'missing'"):
        ld.load_problem(f"{user_file}:missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ld.load_problem(f"{user_file.parent}/absent.py:as_problem")


def test_user_module_from_working_directory(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    monkeypatch.syspath_prepend(str(user_file.parent))
    p = ld.load_problem("user_problem_file:as_triple")
    assert isinstance(p.model, torch.nn.Module)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_here'"):
        ld.load_problem("no_such_module_here:f")


def test_problem_validates_its_parts():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match="Problem.model must be a torch.nn.Module"):
        ld.Problem("model", torch.nn.functional.mse_loss, (torch.zeros(1, 2), torch.zeros(1, 1)))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ld.Problem(model, 3, (torch.zeros(1, 2), torch.zeros(1, 1)))
    # None is a loss too: the model's own outputs.loss (Hugging Face style).
    assert ld.Problem(model, None, (torch.zeros(1, 2), torch.zeros(1, 1))).loss_fn is None
    with pytest.raises(TypeError, match="one-shot"):
        ld.Problem(model, torch.nn.functional.mse_loss, iter([]))


def test_checkpoint_round_trip(user_file, tmp_path):
    spec = f"{user_file}:as_triple"
    trained = ld.load_problem(spec)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.add_(1.0)
    bare, nested = tmp_path / "bare.pt", tmp_path / "nested.pt"
    torch.save(trained.model.state_dict(), bare)
    torch.save({"model_state_dict": trained.model.state_dict(), "epoch": 3}, nested)
    for path in (bare, nested):
        p = ld.load_problem(spec, checkpoint=path)
        assert p.info["checkpoint"] == str(path)
        for a, b in zip(
            p.model.state_dict().values(), trained.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)


def test_bad_checkpoints_name_the_problem_and_leave_the_model(user_file, tmp_path):
    from lossdoctor.problem import load_checkpoint

    model = ld.load_problem(f"{user_file}:as_triple").model
    state = model.state_dict()
    mismatched = {k: v + 1 for k, v in state.items() if k != "2.bias"}
    mismatched["extra.weight"] = torch.zeros(1)
    mismatched["0.weight"] = torch.zeros(5, 3)
    bad = tmp_path / "bad.pt"
    torch.save(mismatched, bad)
    before = ModelSnapshot.take(model)
    with pytest.raises(ValueError) as err:
        load_checkpoint(model, bad)
    message = str(err.value)
    assert "missing keys ['2.bias']" in message and "unexpected keys ['extra.weight']" in message
    assert "0.weight (model (4, 3), file (5, 3))" in message
    before.assert_same(model)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(model, garbage)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Opaque()}, unsafe)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(model, unsafe)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "absent.pt")
    before.assert_same(model)
