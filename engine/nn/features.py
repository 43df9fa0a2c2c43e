"""Weight-free features of maps: the physics summaries that stand in for a trained network in
Fréchet distances (the validation FID of :mod:`engine.tasks.generative`, the emulator report's
FID without a regressor in :mod:`engine.evaluation.emulator`), and :func:`frechet_distance`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.physics.stats import power_spectrum

__all__ = ["SummaryFeatures", "frechet_distance"]


class SummaryFeatures(torch.nn.Module):
    """Weight-free features of maps for a domain FID: ln P(k) and standardised pixel quantiles.

    Per map and channel: ln P̂ in up to ``n_bins`` bins of integer wavenumber index m (k = 2π m/L)
    nearly log-spaced from 1 to N/2 (in pixel units, so no box size: a constant shift of the
    features, which FID ignores), and the quantiles :attr:`levels` of (x − mean)/std of its
    pixels (the shape of the PDF, which P(k) misses). Input (B, C, N, N) float; output
    (B, C · (bins + 7)) float64. Not trained: a stand-in for a network trained on the domain.
    """

    levels = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

    def __init__(self, n_bins: int = 8):
        super().__init__()
        self.n_bins = int(n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape[0], x.shape[1], x.shape[-1]
        m = np.unique(np.round(np.geomspace(1, n // 2, self.n_bins + 1))) - 0.5
        x = x.to(torch.float64)
        logp = torch.log(power_spectrum(x, 2 * math.pi, m, dim=2).power.clamp_min(1e-300))  # k = m
        flat = x.reshape(b, c, -1)
        z = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-30)
        idx = torch.tensor([round(q * (flat.shape[-1] - 1)) for q in self.levels], device=x.device)
        return torch.cat([logp, z.sort(-1).values.index_select(-1, idx)], -1).reshape(b, -1)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, D)`` (Heusel et al.
    2017, eq. 2: ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½)), computed by torchmetrics'
    implementation in float64. Use :func:`engine.evaluation.emulator.fid_kid` for FID/KID with
    their floors; this is the bare distance of the validation metric."""
    from torchmetrics.image.fid import _compute_fid

    a, b = features_a.double(), features_b.double()
    return float(_compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))
