"""SpH: spherical hashing (Heo, Lee, He, Chang, Yoon; CVPR 2012), on feature vectors.

As in the authors' released C++ code (github.com/jp-sglab/Spherical_Hashing, ``Src_CPP``:
``Parameters.h``, ``BinaryHash.cpp`` ``SphericalHashing::Initialize`` / ``Set_Spheres`` /
``Sphere::Set_Radius``, ``BinaryHash.h`` ``Compute_BCode`` / ``Compute_SHD``):

* m = ``NUM_TRAIN_SAMPLES`` = 20,000 training points drawn without replacement (all of the
  training split when it has fewer);
* each of the ``bits`` pivots starts as the mean of 10 training points drawn at random (with
  replacement), "near the data centre";
* each radius is the distance to the ⌊m/2⌋-th nearest training point
  (``INCLUDING_RATIO`` 0.5), so each sphere holds half of the training points;
* at most ``MAX_NUM_ITERATIONS`` = 50 rounds of: count o_ij, the training points inside both
  spheres i and j; stop when |mean(o_ij) − m/4| < ε_m·m/4 and std(o_ij) < ε_s·m/4 over the
  pairs i < j (``OVERLAP_RATIO`` 0.25, ε_m = ``EPSILON_MEAN`` = 0.10, ε_s = ``EPSILON_STDDEV``
  = 0.15); else move each pivot by (1/bits) Σ_j ½ (o_ij/m − ¼)/¼ · (p_i − p_j) (pairs that
  overlap too much repel, too little attract) and set the radii again;
* bit k = 1 when ‖x − p_k‖² ≤ r_k² (inside the sphere), else 0.

Retrieval in the paper ranks by the spherical Hamming distance |b_q ⊕ b_x| / |b_q ∧ b_x|
(released: divisor |AND| + 0.1). hashbench ranks every method by plain Hamming distance;
SpH's runs also record mAP under the spherical distance (``extra_metrics`` in the run record,
:mod:`hashbench.metrics.spherical`).

Options: ``stopping = "mean_abs"`` uses the stopping rule of the authors' MATLAB code
(``Src_Matlab/SphericalHashing.m``) and of the paper, mean(|o_ij − m/4|) ≤ ε_m·m/4 (with
std ≤ ε_s·m/4); ``pivot_samples = 5`` is the MATLAB code's initialisation. The MATLAB code
also checks only after a first move and has no iteration cap; that is not reproduced.

No profiles (no training budget beyond the iteration cap). What a run did (sample size,
pivot moves, whether the rule was met, the final overlap statistics) is recorded under
``training``, with the deviations.

Deviations (``training.deviations``): float64 instead of the C++ float32; the training
overlaps count a point on a sphere's boundary as inside, as encoding does (the C++ table
counts ``distSq < rSq``, leaving the ⌊m/2⌋-th point out of its sphere while training, but
inside when encoding); the training sample is the protocol's training split (the released
program samples the database it indexes). With one bit there is no pair and nothing to
balance: the pivot is not moved (the C++ loop would run its 50 rounds without moving it).

Version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod, require_fitted
from hashbench.params import MAX_ITERATIONS, in_range, non_negative, positive

INCLUDING_RATIO = 0.5  # Parameters.h: the share of training points inside one sphere
OVERLAP_RATIO = 0.25  # Parameters.h: the share inside two spheres
ENCODE_ROWS = 65536  # rows encoded at once (memory: rows × bits distances)


@dataclass(frozen=True)
class SpHParams:
    training_samples: int = field(default=20000, metadata=positive("NUM_TRAIN_SAMPLES", at_most=2**31 - 1))
    epsilon_mean: float = field(default=0.10, metadata=in_range(0, 1, low_open=True, why="EPSILON_MEAN"))
    epsilon_stddev: float = field(default=0.15, metadata=in_range(0, 1, low_open=True, why="EPSILON_STDDEV"))
    max_iterations: int = field(default=50, metadata=non_negative("MAX_NUM_ITERATIONS", at_most=MAX_ITERATIONS))
    pivot_samples: int = field(default=10, metadata=positive("points averaged into an initial pivot", at_most=2**20))
    # "mean": |mean(o_ij) - m/4| < eps_m m/4 (C++); "mean_abs": mean |o_ij - m/4| <= eps_m m/4 (MATLAB, paper)
    stopping: Literal["mean", "mean_abs"] = "mean"


def squared_distances(features: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """‖x − p‖² for every row x and pivot p, (n, bits) float64 (clipped at 0)."""
    x = np.asarray(features, dtype=np.float64)
    out = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ pivots.T) + (pivots * pivots).sum(axis=1)[None, :]
    return np.maximum(out, 0.0, out=out)


def radii_squared(distances: np.ndarray) -> np.ndarray:
    """Sphere::Set_Radius: the ⌊m·0.5⌋-th smallest squared distance of each column."""
    index = int(distances.shape[0] * INCLUDING_RATIO) - 1
    return np.partition(distances, index, axis=0)[index]


def overlap_matrix(inside: np.ndarray) -> np.ndarray:
    """(bits, bits) int64: o_ij, the training points inside spheres i and j (o_ii: inside i),
    from an (m, bits) boolean table."""
    table = inside.astype(np.float64)
    return (table.T @ table).astype(np.int64)  # exact: integer counts far below 2**53


def pair_overlaps(overlaps: np.ndarray) -> np.ndarray:
    """The o_ij of the pairs i < j, in row order."""
    return overlaps[np.triu_indices(overlaps.shape[0], k=1)]


def converged(pair_overlaps: np.ndarray, samples: int, params: SpHParams) -> bool:
    """The stopping rule on the pairwise overlaps o_ij (i < j) of ``samples`` points."""
    if pair_overlaps.size == 0:
        return True  # one bit: no pair to balance
    target = samples * OVERLAP_RATIO
    spread = pair_overlaps.std()  # population standard deviation, as released
    if params.stopping == "mean":
        return abs(pair_overlaps.mean() - target) < params.epsilon_mean * target and spread < params.epsilon_stddev * target
    return np.abs(pair_overlaps - target).mean() <= params.epsilon_mean * target and spread <= params.epsilon_stddev * target


def pivot_forces(pivots: np.ndarray, overlaps: np.ndarray, samples: int) -> np.ndarray:
    """The released update: Σ_j ½ (o_ij/m − ¼)/¼ (p_i − p_j), divided by the number of bits.

    ``overlaps`` is the full (bits, bits) matrix (its diagonal is not used)."""
    alpha = 0.5 * (overlaps / samples - OVERLAP_RATIO) / OVERLAP_RATIO
    np.fill_diagonal(alpha, 0.0)
    return (alpha.sum(axis=1)[:, None] * pivots - alpha @ pivots) / pivots.shape[0]


class SphericalHashing(HashingMethod):
    name = "sph"
    family = "classic"
    version = "1"
    description = "Spherical hashing: balanced, pairwise-independent hyperspheres (bit 1 = inside)"
    Params = SpHParams

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        features = np.asarray(train.features, dtype=np.float64)
        total = features.shape[0]
        if total < 2:
            raise UserError(f"{self.name} needs at least 2 training points to place its spheres, got {total}")
        rng = self.context.rng()
        samples = min(self.params.training_samples, total)
        sample = features[np.sort(rng.choice(total, samples, replace=False))]
        starts = rng.integers(0, samples, size=(self.bits, self.params.pivot_samples))
        pivots = sample[starts].mean(axis=1)
        distances = squared_distances(sample, pivots)
        radii = radii_squared(distances)
        moves, met = 0, False
        for _ in range(self.params.max_iterations):
            overlaps = overlap_matrix(distances <= radii)
            if converged(pair_overlaps(overlaps), samples, self.params):
                met = True
                break
            pivots = pivots + pivot_forces(pivots, overlaps, samples)
            distances = squared_distances(sample, pivots)
            radii = radii_squared(distances)
            moves += 1
        self.pivots, self.radii_squared = pivots, radii
        overlaps = overlap_matrix(distances <= radii)
        pairs = pair_overlaps(overlaps)
        self.context.record.update(
            training_samples=samples,
            pivot_moves=moves,
            stopped_by_rule=met,  # the rule held before the iteration cap
            converged=bool(converged(pairs, samples, self.params)),  # the final spheres meet it
            inside_mean=float(np.diag(overlaps).mean()) / samples,
            overlap_mean=float(pairs.mean()) / samples if pairs.size else None,
            overlap_std=float(pairs.std()) / samples if pairs.size else None,
            deviations=self.deviations(train, samples),
        )

    def deviations(self, train: DataSplit, samples: int) -> list[str]:
        found = [
            "float64 instead of the released float32",
            "training overlaps count a point on a sphere's boundary as inside, as encoding does "
            "(the C++ training table uses a strict <)",
            "the training sample is drawn from the protocol's training split",
        ]
        if samples < self.params.training_samples:
            found.append(f"{samples} training points instead of {self.params.training_samples} (the whole training split)")
        if self.bits == 1:
            found.append("one bit: no pair of spheres, the pivot is not moved")
        return found

    def encode(self, split: DataSplit) -> np.ndarray:
        require_fitted(self, "pivots")
        features = split.features
        codes = np.empty((features.shape[0], self.bits), dtype=bool)
        for start in range(0, features.shape[0], ENCODE_ROWS):
            stop = start + ENCODE_ROWS
            codes[start:stop] = squared_distances(features[start:stop], self.pivots) <= self.radii_squared
        return codes

    @classmethod
    def extra_metrics(
        cls,
        query_codes: Any,
        database_codes: Any,
        query_labels: Any,
        database_labels: Any,
        *,
        bits: int,
        topk: int | None,
        relevance: Any = None,
    ) -> dict[str, dict[str, Any]]:
        """mAP with the database ranked by the spherical Hamming distance (the paper's
        retrieval), beside the standard metrics computed under plain Hamming distance."""
        from hashbench.metrics.spherical import DISTANCE_TEXT, spherical_map

        result = spherical_map(
            query_codes, database_codes, query_labels, database_labels, relevance=relevance, bits=bits, topk=topk
        )
        ranking = f"database ranked by spherical Hamming distance {DISTANCE_TEXT} (released Compute_SHD), ties by database position"
        return {
            "map_spherical": {"value": result.map, "description": f"mAP@{result.map_k}, {ranking}"},
            "map_all_spherical": {"value": result.map_all, "description": f"mAP over the whole database, {ranking}"},
        }
