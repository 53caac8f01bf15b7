"""DSCH's semantic components and loss (:mod:`hashbench.methods.dsch`).

The component step follows the released ``run_dsch_cifar.py`` (github.com/Bruce-XJChen/DSCH)
line by line; the loss terms follow the paper, because the released ``utils/Update.py``
(``Inference``, ``H_Loss``) is not in the repository (``utils`` is an empty file there).

Component step (the E-step), on the continuous codes h of every training image:

* fine components: scikit-learn's ``GaussianMixture(n_components=m1)`` with its defaults
  (full covariances, k-means initialisation, tol 1e-3, reg_covar 1e-6, 100 EM iterations,
  one initialisation), as released; p¹ = ``predict_proba(h)``, l2-normalised per row in the
  CIFAR-10 script; μ¹ = sign(GMM means) in the CIFAR-10 script (the means themselves in the
  FLICKR25K / NUS-WIDE scripts); π¹ = the mixture weights;
* coarse components: ``KMeans(n_clusters=m2)`` over the GMM means (before the sign);
  p(C²|C¹) = one-hot of the k-means labels; μ² = sign(k-means centres) (CIFAR-10 script);
  π² = 1/m2; p² = p¹ · p(C²|C¹) (from the normalised p¹);
* instance similarity s_ij = p¹_i · p¹_j, the same for both augmented views.

Loss (the M-step) on the 2B codes of two views of B images, with cos the cosine similarity:

* instance correlation: a contrastive loss whose positives are weighted by s:
  L_ic = mean_a Σ_{b≠a} w_ab · −log softmax_{b≠a}(cos(h_a, h_b)/τ), w_ab = s_ab / Σ_{c≠a} s_ac;
  with s = identity (the released baseline script, ``run_baseline_cifar.py``) it is NT-Xent;
* component correlation at each level ℓ (fine, coarse):
  L_ℓ = mean_a −Σ_j pˡ_ja log softmax_j(cos(h_a, μˡ_j)/τ + log πˡ_j);
* total = L_ic + λ·(L_fine + L_coarse), as ``run_dsch_cifar.py`` composes it (no separate
  quantisation term there).

Imported by the method only when it trains, so that describing it stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hashbench.errors import UserError

COS_EPS = 1e-8  # a zero centre (a mean of exactly 0 has sign 0) has cosine 0 with every code
KMEANS_INIT = 10  # scikit-learn's KMeans default n_init when the released code was written


@dataclass(frozen=True)
class Components:
    """One component step's result (numpy, float64)."""

    p1: np.ndarray  # (n, m1) fine assignments (l2-normalised rows where asked)
    p2: np.ndarray  # (n, m2) coarse assignments
    mu1: np.ndarray  # (m1, bits) fine centres
    mu2: np.ndarray  # (m2, bits) coarse centres
    pi1: np.ndarray  # (m1,) fine priors (mixture weights)
    pi2: np.ndarray  # (m2,) coarse priors (uniform)
    coarse_of_fine: np.ndarray  # (m1,) k-means label of each fine component
    gmm_converged: bool
    gmm_iterations: int


def estimate_components(
    codes: np.ndarray,
    m1: int,
    m2: int,
    seed: int,
    *,
    binary_centres: bool = True,
    l2_assignments: bool = True,
    covariance_type: str = "full",
    max_iter: int = 100,
    threads: int | None = None,
) -> Components:
    """The released component step on continuous codes ``(n, bits)``; ``threads``: the
    BLAS / OpenMP threads scikit-learn may use (None: its own choice)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _estimate(codes, m1, m2, seed, binary_centres, l2_assignments, covariance_type, max_iter)


def _estimate(codes, m1, m2, seed, binary_centres, l2_assignments, covariance_type, max_iter) -> Components:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, dtype=np.float64)
    n = codes.shape[0]
    if not 1 <= m2 <= m1 <= n:
        raise UserError(f"dsch needs 1 <= m2 <= m1 <= training items; got m1={m1}, m2={m2} for {n} items")
    gmm = GaussianMixture(n_components=m1, covariance_type=covariance_type, max_iter=max_iter, random_state=seed)
    try:
        gmm.fit(codes)
    except ValueError as error:  # ill-defined covariances (collapsed codes)
        message = str(error).splitlines()[0]
        raise UserError(
            f"dsch: the Gaussian mixture over the codes failed ({message}); "
            "use fewer fine components (m1) or covariance_type=diag"
        ) from error
    p1 = gmm.predict_proba(codes)
    if l2_assignments:
        p1 = p1 / np.maximum(np.linalg.norm(p1, axis=1, keepdims=True), 1e-12)  # sklearn's normalize
    means = gmm.means_
    kmeans = KMeans(n_clusters=m2, n_init=KMEANS_INIT, random_state=seed).fit(means)
    labels = kmeans.labels_.astype(np.int64)
    one_hot = np.zeros((m1, m2))
    one_hot[np.arange(m1), labels] = 1.0
    return Components(
        p1=p1,
        p2=p1 @ one_hot,
        mu1=np.sign(means) if binary_centres else means,
        mu2=np.sign(kmeans.cluster_centers_) if binary_centres else kmeans.cluster_centers_,
        pi1=gmm.weights_.copy(),
        pi2=np.full(m2, 1.0 / m2),
        coarse_of_fine=labels,
        gmm_converged=bool(gmm.converged_),
        gmm_iterations=int(gmm.n_iter_),
    )


# --------------------------------------------------------------------------------------------
# the loss


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) for every row pair."""
    return F.normalize(a, dim=1, eps=COS_EPS) @ F.normalize(b, dim=1, eps=COS_EPS).T


def instance_loss(codes: torch.Tensor, similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """L_ic over ``codes`` (2B, bits) with target weights ``similarity`` (2B, 2B)."""
    count = codes.shape[0]
    eye = torch.eye(count, dtype=torch.bool, device=codes.device)
    logits = (cosine_matrix(codes, codes) / tau).masked_fill(eye, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    weights = similarity.to(codes.dtype).masked_fill(eye, 0.0)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return -(weights * log_p).sum(dim=1).mean()


def component_loss(codes: torch.Tensor, centres: torch.Tensor, assignments: torch.Tensor, log_priors: torch.Tensor, tau: float) -> torch.Tensor:
    """L_fine or L_coarse: codes (2B, bits), centres (m, bits), assignments (2B, m), log priors (m,)."""
    logits = cosine_matrix(codes, centres.to(codes.dtype)) / tau + log_priors.to(codes.dtype)
    return -(assignments.to(codes.dtype) * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def dsch_loss(
    codes: torch.Tensor,
    similarity: torch.Tensor,
    fine: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    coarse: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tau: float,
    lambd: float,
) -> dict[str, torch.Tensor]:
    """The released composition L_ic + λ(L_fine + L_coarse); ``fine``/``coarse`` are
    (centres, assignments of the 2B codes, log priors)."""
    ic = instance_loss(codes, similarity, tau)
    cc_fine = component_loss(codes, *fine, tau)
    cc_coarse = component_loss(codes, *coarse, tau)
    return {"loss": ic + lambd * (cc_fine + cc_coarse), "instance": ic, "fine": cc_fine, "coarse": cc_coarse}


# --------------------------------------------------------------------------------------------
# the network's hash layer and the components kept between steps


def build_head(feature_dim: int, bits: int) -> torch.nn.Sequential:
    """The hash layer: Linear(features → bits) → tanh (continuous codes h; bits = h ≥ 0)."""
    return torch.nn.Sequential(torch.nn.Linear(feature_dim, bits), torch.nn.Tanh())


def forward_codes(model: torch.nn.ModuleDict, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Continuous codes h of a normalised batch; the hash layer runs in float32."""
    from hashbench.toolkit.training import autocast

    backbone = model["backbone"]
    with autocast(device), torch.set_grad_enabled(backbone.trainable and torch.is_grad_enabled()):
        features = backbone(images)
    return model["head"](features.float())


class ComponentState(torch.nn.Module):
    """The latest component step and the optimiser-step counter, as buffers: checkpointed and
    restored with the weights, so a resumed run goes on with the same components."""

    def __init__(self, items: int, m1: int, m2: int, bits: int) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("p1", torch.zeros(items, m1))
        self.register_buffer("p2", torch.zeros(items, m2))
        self.register_buffer("mu1", torch.zeros(m1, bits))
        self.register_buffer("mu2", torch.zeros(m2, bits))
        self.register_buffer("log_pi1", torch.zeros(m1))
        self.register_buffer("log_pi2", torch.zeros(m2))

    def assign(self, components: Components) -> None:
        for name in ("p1", "p2", "mu1", "mu2"):
            getattr(self, name).copy_(torch.as_tensor(getattr(components, name), dtype=torch.float32))
        # A weight of 0 would be log 0 = −inf for every code: floored at float32's tiny.
        self.log_pi1.copy_(torch.log(torch.as_tensor(components.pi1, dtype=torch.float32).clamp_min(1e-38)))
        self.log_pi2.copy_(torch.log(torch.as_tensor(components.pi2, dtype=torch.float32)))

    def batch_targets(self, positions: np.ndarray) -> tuple[torch.Tensor, tuple, tuple]:
        """s (2B, 2B) and the fine / coarse (centres, assignments, log priors) of a batch's
        two views (rows: the B images' first views, then their second views)."""
        index = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=self.p1.device)
        p1, p2 = self.p1[index], self.p2[index]
        similarity = (p1 @ p1.T).repeat(2, 2)
        return similarity, (self.mu1, p1.repeat(2, 1), self.log_pi1), (self.mu2, p2.repeat(2, 1), self.log_pi2)
