"""Study: curvature layer by layer, an MLP against a small transformer (Zhang et al., 2024).

The same short training (AdamW, a few hundred steps) on an MNIST-1D MLP and on a 2-layer
transformer with tied embeddings on a Markov-chain token task; then each model's per-block table
(:func:`lossdoctor.layer_curvature`): every module's own Hessian block, its λ_max and trace, and the
block heterogeneity (mean Jensen-Shannon distance between the blockwise spectral densities). The
transformer's blocks see very different curvature (embeddings, attention projections, LayerNorm
gains), so one learning rate cannot fit them all: the case for an adaptive method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .._results import ResultMixin
from ..analysis.layers import LayerCurvature, layer_curvature
from ..progress import Progress, scaled
from ._threads import one_thread
from .stall_cases import TinyLM, batches_of, markov_tokens, mlp, mnist, token_loss, train_steps

STEPS = 300


@dataclass(frozen=True)
class LayersStudy(ResultMixin):
    """The per-layer curvature study's result: the MLP's table and the transformer's."""

    steps: int
    mlp_loss: float
    transformer_loss: float
    mlp: LayerCurvature
    transformer: LayerCurvature

    def __str__(self) -> str:
        return (
            f"after {self.steps} AdamW steps: MLP heterogeneity {self.mlp.heterogeneity:.3f}, transformer "
            f"{self.transformer.heterogeneity:.3f}\n{self.mlp}\n{self.transformer}"
        )


def run(*, quick: bool = True, progress: Progress | None = None) -> LayersStudy:
    """Run the per-layer curvature study."""
    steps = STEPS if quick else 3 * STEPS
    with one_thread(), torch.random.fork_rng():
        x, y = mnist(0, 1024)
        net = mlp(0, 64, depth=2)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        losses = train_steps(
            net, F.cross_entropy, opt, batches_of(x, y, 64, 0, epochs=20), 0, steps
        )
        if progress is not None:
            progress(1, 4)
        mlp_table = layer_curvature(
            net,
            F.cross_entropy,
            (x[:256], y[:256]),
            optimizer=opt,
            probes=2,
            lanczos_steps=12,
            progress=scaled(progress, 1, 4),
        )
        tx, ty = markov_tokens(0)
        torch.manual_seed(0)
        lm = TinyLM()
        opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.01)
        lm_losses = train_steps(lm, token_loss, opt, batches_of(tx, ty, 32, 0, epochs=20), 0, steps)
        if progress is not None:
            progress(3, 4)
        lm_table = layer_curvature(
            lm,
            token_loss,
            (tx[:64], ty[:64]),
            optimizer=opt,
            probes=2,
            lanczos_steps=12,
            progress=scaled(progress, 3, 4),
        )
    if progress is not None:
        progress(4, 4)
    return LayersStudy(
        steps=steps,
        mlp_loss=losses[-1],
        transformer_loss=lm_losses[-1],
        mlp=mlp_table,
        transformer=lm_table,
    )
