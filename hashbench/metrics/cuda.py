"""The same rankings computed with torch on the codes' device (a CUDA GPU).

Inputs are checked and packed by :func:`hashbench.metrics.inputs.prepare` exactly as on the
CPU (the packed codes are small); the quadratic work runs on the device: distances from a
+-1 matmul, relevance from a multi-hot matmul (or scattered from per-query lists), the stable ranking from one sort of int64 keys
(distance, index, relevant) per query. Only the (queries x groups) histograms and per-query
values come back, for the tie-aware closed form on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from hashbench.metrics.inputs import Inputs, NeighbourRelevance, Relevance, key_shift
from hashbench.metrics.result import Ranking


def device_of(*arrays: Any) -> Any:
    """The CUDA device of the first array when every array is a torch tensor on a CUDA
    device (found without importing torch), else None."""
    if all(getattr(getattr(a, "device", None), "type", None) == "cuda" for a in arrays):
        return arrays[0].device
    return None


def _float_type(largest: int) -> Any:
    """A float type in which integers up to ``largest`` (and sums of that many +-1 or 0/1
    products) are exact."""
    import torch

    if largest <= 2048:
        return torch.float16
    if largest <= 2**24:
        return torch.float32
    return torch.float64


def _signs(packed: Any, bits: int, dtype: Any) -> Any:
    """Packed bytes (n, B) on the device -> +-1 values (n, bits)."""
    import torch

    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    unpacked = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(packed.shape[0], -1)[:, :bits]
    return unpacked.to(dtype) * 2 - 1


def _relevance_on(relevance: Relevance | NeighbourRelevance, device: Any) -> Callable[[slice], Any]:
    """A function from a chunk of queries to their bool relevance rows (c, N) on ``device``:
    from a multi-hot matmul (labels) or by scattering each query's relevant positions."""
    import torch

    if isinstance(relevance, NeighbourRelevance):
        indptr = torch.from_numpy(relevance.indptr).to(device)
        indices = torch.from_numpy(relevance.indices).to(device)

        def scattered(rows: slice) -> Any:
            start, stop, _ = rows.indices(indptr.numel() - 1)
            out = torch.zeros((stop - start, relevance.size), dtype=torch.bool, device=device)
            owner = torch.repeat_interleave(
                torch.arange(stop - start, device=device), indptr[start + 1 : stop + 1] - indptr[start:stop]
            )
            out[owner, indices[indptr[start] : indptr[stop]]] = True
            return out

        return scattered
    label_type = _float_type(relevance.query_multi_hot.shape[1])
    query_hot = torch.from_numpy(np.ascontiguousarray(relevance.query_multi_hot))
    query_hot = query_hot.to(device).to(label_type)
    database_hot = torch.from_numpy(np.ascontiguousarray(relevance.database_multi_hot))
    database_hot = database_hot.to(device).to(label_type).T.contiguous()

    def shared_label(rows: slice) -> Any:
        return (query_hot[rows] @ database_hot) > 0

    return shared_label


def rankings(
    inputs: Inputs, map_k: int, ks: Sequence[int], chunks: Sequence[slice], device: Any
) -> Iterator[Ranking]:
    """One :class:`Ranking` per chunk of queries, like the CPU kernels, computed on ``device``."""
    import torch

    bits = inputs.bits
    size = inputs.num_database
    groups = inputs.groups
    ks_clipped = [min(k, size) for k in ks]
    code_type = _float_type(bits)
    query_signs = _signs(torch.from_numpy(inputs.query_bytes).to(device), bits, code_type)
    database_signs = _signs(
        torch.from_numpy(inputs.database_bytes).to(device), bits, code_type
    ).T.contiguous()
    relevant_rows = _relevance_on(inputs.relevance, device)
    shift = key_shift(size)
    base = torch.arange(size, device=device, dtype=torch.int64) << 1
    ranks = torch.arange(1, size + 1, device=device, dtype=torch.float64)
    for rows in chunks:
        # dot = bits - 2 * distance, an exact integer in code_type
        dot = (query_signs[rows] @ database_signs).to(torch.int64)
        distances = (bits - dot) >> 1
        del dot
        relevant = relevant_rows(rows)
        keys = (distances << shift) | base | relevant.to(torch.int64)
        del distances, relevant
        keys = torch.sort(keys, dim=1).values
        flags = (keys & 1).bool()
        sorted_distances = keys >> shift
        del keys
        count = flags.shape[0]
        counts = torch.zeros((count, groups), device=device, dtype=torch.int64)
        counts.scatter_add_(1, sorted_distances, torch.ones_like(sorted_distances))
        relevant_counts = torch.zeros_like(counts)
        relevant_counts.scatter_add_(1, sorted_distances, flags.to(torch.int64))
        del sorted_distances
        hits = torch.cumsum(flags, dim=1)
        precision = torch.where(flags, hits / ranks, 0.0)
        del flags
        positives = hits[:, -1]
        ap_all = torch.where(positives > 0, precision.sum(1) / positives.clamp(min=1), 0.0)
        found = hits[:, map_k - 1]
        ap = torch.where(found > 0, precision[:, :map_k].sum(1) / found.clamp(min=1), 0.0)
        r_at_k = (
            hits[:, [k - 1 for k in ks_clipped]]
            if ks_clipped
            else torch.zeros((count, 0), device=device, dtype=torch.int64)
        )
        del hits, precision
        yield Ranking(
            counts=counts.cpu().numpy(),
            relevant_counts=relevant_counts.cpu().numpy(),
            ap=ap.cpu().numpy(),
            ap_all=ap_all.cpu().numpy(),
            r_at_k=r_at_k.cpu().numpy(),
        )
