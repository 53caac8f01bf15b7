"""The torch side of NSH and SDC as released in github.com/kamwoh/sdc (``models/layers/``,
``models/arch/nsh.py`` / ``sdc.py``, ``models/loss/nsh.py`` / ``sdc.py``): the heads, the soft
sort, the SortedNCE loss, the calibration targets and the SDC loss, and the backbone pass.

Imported by the methods only when they train or encode, so that describing them stays light.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.toolkit.training import autocast

# --------------------------------------------------------------------------------------------
# heads


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


def nsh_heads(feature_dim: int, bits: int, latent_dim: int, batch_norm: bool = False) -> nn.ModuleDict:
    """``models/arch/nsh.py``: hash encoder Linear → Tanh, latent encoder Linear → L2 norm;
    ``batch_norm``: the BatchNorm1d(bits) before the Tanh that the released file has commented out."""
    hash_layers = [nn.Linear(feature_dim, bits)] + ([nn.BatchNorm1d(bits)] if batch_norm else []) + [nn.Tanh()]
    return nn.ModuleDict(
        {
            "hash": nn.Sequential(*hash_layers),
            "latent": nn.Sequential(nn.Linear(feature_dim, latent_dim), L2Normalize()),
        }
    )


def sdc_head(feature_dim: int, bits: int) -> nn.Sequential:
    """``models/arch/sdc.py``: Linear(F → F) → GELU → Linear(F → bits) → BatchNorm1d(bits)."""
    return nn.Sequential(
        nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, bits), nn.BatchNorm1d(bits)
    )


def backbone_features(backbone: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Features of a normalised batch in float32. A frozen trunk runs in eval mode (the
    released VGG-16 drops its Dropout layers, its ResNet-50 keeps eval mode) and without
    gradients; a trainable one (the small backbone) as the module's mode says."""
    with autocast(device):
        if backbone.trainable:
            features = backbone(images)
        else:
            backbone.eval()
            with torch.no_grad():
                features = backbone(images)
    return features.float()


# --------------------------------------------------------------------------------------------
# NSH


def soft_sort(scores: torch.Tensor, tau: float, power: float = 1.0) -> torch.Tensor:
    """SoftSort (``models/layers/softsort.py``): for rows ``scores`` ``(n, k)``, ``P`` ``(n, k, k)``
    with ``P[i, r]`` = softmax over j of −|scores[i, j] − sorted_i[r]|^power / tau, ``sorted_i``
    the row sorted in descending order: row r softly picks the row's r-th largest entry."""
    column = scores.unsqueeze(-1)
    ordered = column.sort(descending=True, dim=1)[0]
    distances = (column.transpose(1, 2) - ordered).abs().pow(power).neg() / tau
    return distances.softmax(-1)


def sorted_nce(
    b: torch.Tensor, z: torch.Tensor, m: int, tau: float, softsort_tau: float, quan: float, variant: str = "released"
) -> dict[str, torch.Tensor]:
    """The NSH loss of ``models/loss/nsh.py`` on the stacked views (first half view 1).

    S = b₁b₂ᵀ / (2·bits) + ½; P = SoftSort(S); E = P z₁ (each row's view-1 latents in the
    soft order of S); c[i, r] = ⟨E[i, r], z₂[i]⟩. For each of the top m ranks r: the
    cross-entropy, label 0, of softmax([c[:, r], c[:, m:]] / τ) — the released code passes
    these probabilities to ``F.cross_entropy``, which applies its own log-softmax — averaged
    over the m ranks; plus quan · MSE(b, sign b). ``variant="paper"``: the cross-entropy of
    the logits themselves (one softmax, the paper's SortedNCE).
    """
    half = b.shape[0] // 2
    b1, b2 = b[:half], b[half:]
    z1, z2 = z[:half], z[half:]
    similarity = b1 @ b2.t() / (2 * b.shape[1]) + 0.5
    permutation = soft_sort(similarity, softsort_tau)
    sorted_latents = torch.einsum("ijk,kd->ijd", permutation, z1)
    cosine = torch.einsum("ijd,id->ij", sorted_latents, z2)
    labels = torch.zeros(half, dtype=torch.long, device=b.device)
    nce = b.new_zeros(())
    for rank in range(m):
        logits = torch.cat([cosine[:, rank : rank + 1], cosine[:, m:]], dim=1) / tau
        if variant == "released":
            logits = torch.softmax(logits, dim=-1)
        nce = nce + F.cross_entropy(logits, labels) / m
    quantization = F.mse_loss(b, b.sign())
    return {"loss": nce + quan * quantization, "nce": nce, "quantization": quantization}


# --------------------------------------------------------------------------------------------
# SDC


def calibration_targets(count: int, beta_a: float, beta_b: float, ortho: bool = False) -> np.ndarray:
    """The sorted target similarities of ``count`` pairs (``distance_preserving_loss``): the
    Beta(a, b) quantiles at the midpoints (2i + 1) / (2·count), mapped to [−1, 1]; clipped at 0
    under the orthogonality constraint."""
    from scipy import stats

    grid = np.arange(1.0, 2 * count, 2.0).astype(np.float32) / (2 * count)
    targets = (stats.beta.ppf(grid, a=beta_a, b=beta_b) * 2 - 1).astype(np.float32)
    return np.maximum(targets, 0.0) if ortho else targets


def sdc_loss(
    x: torch.Tensor,
    v: torch.Tensor,
    *,
    rec: float,
    quan: float,
    beta_a: float,
    beta_b: float,
    rec_type: str = "l1",
    quan_type: str = "cs",
    ortho: bool = False,
) -> dict[str, torch.Tensor]:
    """``models/loss/sdc.py`` without its contrastive option: the batch's first half paired
    with its second half (an odd last item dropped); the pairs ordered by the cosine of their
    (detached) backbone features ``x``; the cosines of their head outputs ``v`` in that order
    pulled (L1 by default) to the calibration targets; plus quan · mean(1 − cos(v, sign v))."""
    if x.shape[0] % 2:
        x, v = x[:-1], v[:-1]
    half = x.shape[0] // 2
    hash_cos = F.cosine_similarity(v[:half], v[half:])
    feature_cos = F.cosine_similarity(x[:half], x[half:]).detach()
    order = torch.sort(feature_cos)[1]
    hash_cos = hash_cos[order]
    targets = torch.from_numpy(calibration_targets(half, beta_a, beta_b, ortho)).to(v.device)
    if rec_type == "l2":
        reconstruction = F.mse_loss(hash_cos, targets)
    elif rec_type == "l1":
        reconstruction = F.l1_loss(hash_cos, targets)
    else:  # "hinge": only similarities above their target are penalised
        reconstruction = (hash_cos - targets).relu().mean()
    sign = v.sign()
    if quan_type == "cs":
        quantization = (1 - torch.cosine_similarity(v, sign)).mean()
    elif quan_type == "l1":
        quantization = (v - sign).abs().mean()
    elif quan_type == "l2":
        quantization = (v - sign).square().mean()
    else:  # "p3", GreedyHash's cubic penalty
        quantization = (v - sign).pow(3).abs().mean()
    return {"loss": rec * reconstruction + quan * quantization, "reconstruction": reconstruction, "quantization": quantization}
