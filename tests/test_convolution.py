"""The convolutions' faster second backward (``curvature/_convolution.py``) against torch's own,
in float64: the same Hessian-vector products on every kind of convolution layer users bring, the
functions put back afterwards, and torch's path kept where ours does not apply."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from lossdoctor.curvature._convolution import fast_convolution_double_backward

LAYERS = {
    "conv1d-stride-2": lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2),
    "conv1d-dilation-no-bias": lambda: nn.Conv1d(3, 4, 3, dilation=2, bias=False),
    "conv1d-reflect": lambda: nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect"),
    "conv2d-asymmetric": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)),
    "conv2d-depthwise": lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3),
    "conv2d-groups-no-bias": lambda: nn.Conv2d(4, 6, 1, groups=2, bias=False),
    "conv2d-same": lambda: nn.Conv2d(3, 4, 4, padding="same"),  # left to torch (string padding)
    "conv3d": lambda: nn.Conv3d(3, 2, 2, stride=(1, 2, 1), padding=1),
}
SPATIAL = {1: (9,), 2: (6, 5), 3: (4, 5, 3)}


def network(layer_id: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The layer between another convolution (so its input needs a gradient) and a linear head."""
    torch.manual_seed(0)
    layer = LAYERS[layer_id]()
    dims = layer.weight.dim() - 2
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    first = conv(2, layer.in_channels, 1)
    body = nn.Sequential(first, nn.Tanh(), layer, nn.Tanh(), nn.Flatten())
    x = torch.randn(5, 2, *SPATIAL[dims])
    features = body(x).shape[1]
    model = nn.Sequential(body, nn.Linear(features, 3)).double()
    return model, x.double(), torch.tensor([0, 1, 2, 1, 0])


def kept_products(model: nn.Module, x, y, vectors: torch.Tensor, fast: bool) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    context = fast_convolution_double_backward() if fast else torch.enable_grad()
    with context:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    out = []
    for v in vectors:
        pieces = torch.split(v, [p.numel() for p in params])
        hv = torch.autograd.grad(
            grads, params, [q.view_as(p) for q, p in zip(pieces, params)], retain_graph=True
        )
        out.append(torch.cat([h.reshape(-1) for h in hv]))
    return torch.stack(out)


@pytest.mark.parametrize("layer_id", sorted(LAYERS))
def test_products_equal_torchs_own_second_backward(layer_id):
    model, x, y = network(layer_id)
    n = sum(p.numel() for p in model.parameters())
    vectors = torch.randn(3, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = kept_products(model, x, y, vectors, fast=True)
    theirs = kept_products(model, x, y, vectors, fast=False)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14 * float(theirs.abs().max()))


@pytest.mark.parametrize("layer_id", ["conv1d-stride-2", "conv2d-depthwise", "conv3d"])
def test_engine_hessian_equals_autograds_dense_hessian(layer_id):
    """The engine (which builds its graphs with the fast path) against torch.func's Hessian of the
    loss as a function of the flat parameter vector."""
    model, x, y = network(layer_id)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        params = {k: q.view(s) for k, q, s in zip(names, pieces, shapes)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    truth = torch.func.hessian(loss_of)(flat)
    dense = ld.dense_hessian(model, F.cross_entropy, [(x, y)])
    assert torch.allclose(dense, 0.5 * (truth + truth.T), rtol=1e-10, atol=1e-12)


def test_a_frozen_convolution_and_a_parameter_subset():
    """Weights that need no gradient (frozen, or left out by params=) take the same path."""
    model, x, y = network("conv2d-depthwise")
    model[0][2].weight.requires_grad_(False)
    dense = ld.dense_hessian(model, F.cross_entropy, [(x, y)], params=["0.2.bias", "1.weight"])
    model[0][2].weight.requires_grad_(True)
    full = ld.dense_hessian(model, F.cross_entropy, [(x, y)])
    names = [name for name, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    starts = dict(zip(names, torch.tensor([0, *sizes]).cumsum(0).tolist()))
    keep = torch.cat(
        [
            torch.arange(starts[k], starts[k] + p.numel())
            for k, p in model.named_parameters()
            if k in ("0.2.bias", "1.weight")
        ]
    )
    assert torch.allclose(dense, full[keep][:, keep], rtol=1e-10, atol=1e-12)


def test_functions_are_put_back_and_unusable_calls_go_to_torch():
    originals = F.conv1d, F.conv2d, F.conv3d
    with pytest.raises(RuntimeError, match="inside"), fast_convolution_double_backward():
        assert F.conv2d is not originals[1]
        raise RuntimeError("inside")
    assert (F.conv1d, F.conv2d, F.conv3d) == originals
    w = torch.randn(4, 3, 3, requires_grad=True)
    with fast_convolution_double_backward():
        unbatched = F.conv1d(torch.randn(3, 8), w)  # torch's path: no batch dimension
        with torch.no_grad():
            plain = F.conv1d(torch.randn(2, 3, 8), w)  # no graph to build
        batched = F.conv1d(torch.randn(2, 3, 8), w)
    assert "_Convolution" not in unbatched.grad_fn.name() and plain.grad_fn is None
    assert "_Convolution" in batched.grad_fn.name()


def test_third_derivatives_still_flow():
    """Differentiating a product again (create_graph=True) gives torch's numbers too."""
    model, x, y = network("conv1d-stride-2")
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    results = []
    for fast in (True, False):
        context = fast_convolution_double_backward() if fast else torch.enable_grad()
        with context:
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, v, create_graph=True)
        third = torch.autograd.grad(sum((h * h).sum() for h in hv), params)
        results.append(torch.cat([t.reshape(-1) for t in third]))
    assert torch.allclose(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_threads_that_overlap_leave_torchs_functions_as_they_were():
    """A enters, B enters, A leaves, B leaves: B keeps the fast path until it leaves, and then
    torch's own functions are back (saving and restoring per caller would leave A's replacement
    installed for good)."""
    originals = F.conv1d, F.conv2d, F.conv3d
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a() -> None:
        with fast_convolution_double_backward():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def b() -> None:
        a_inside.wait(10)
        with fast_convolution_double_backward():
            b_inside.set()
            a_left.wait(10)
            seen["patched after A left"] = F.conv2d is not originals[1]

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"patched after A left": True}
    assert (F.conv1d, F.conv2d, F.conv3d) == originals
    with fast_convolution_double_backward(), fast_convolution_double_backward():  # nested
        assert F.conv1d is not originals[0]
    assert (F.conv1d, F.conv2d, F.conv3d) == originals


def test_a_ctrl_c_inside_the_block_puts_torchs_functions_back():
    originals = F.conv1d, F.conv2d, F.conv3d, F.hardsigmoid, F.hardswish
    model, x, y = network("conv1d-stride-2")
    with pytest.raises(KeyboardInterrupt), fast_convolution_double_backward():
        model(x)
        raise KeyboardInterrupt
    assert (F.conv1d, F.conv2d, F.conv3d, F.hardsigmoid, F.hardswish) == originals
