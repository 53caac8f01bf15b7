"""Retrieval metrics for binary codes, exact to the definitions of docs/PROTOCOLS.md and
README.md (both under "Metrics").

Ranking: the database is ranked for each query by Hamming distance, ties broken by database
index (a stable order). An item is relevant when it shares at least one label with the query,
or, given ``relevance`` instead of labels, when the query's own list names it (its K true
nearest neighbours, say: see :mod:`hashbench.data.neighbours`).

Everything is computed per chunk of queries on bit-packed codes (XOR + popcount), so memory is
bounded by the chunk size and never holds a queries x database float matrix. Relevance rows
are ORs of per-class bitmaps of the database, or set bit by bit from per-query lists.
Distances are small integers, so the exact stable ranking needs no comparison sort: the
compiled kernels (numba) count, per query, the items and relevant items at each distance,
and each relevant item's rank follows from its distance group's start and its place inside
the group in index order (O(database) per query); without numba, one sort of packed integer
keys (distance, database index, relevant bit) per query gives the same ranking. Both give
the same values, bit for bit. From the ranking:

* per distance, the number of items and of relevant items give N+, the Hamming-radius
  precision/recall for every radius (the PR curve) and the tie-aware mAP with its bounds in
  closed form (He et al., CVPR 2018, plus an exact hypergeometric treatment of the group
  that the cut-off k splits);
* the ranks of the relevant items give mAP@k, mAP over the whole ranking and R_k.

:func:`mean_average_precision` (mAP@k alone, for per-epoch monitoring) ranks only the items
within the distance of the k-th item, found from a 1/8 sample of the distances (and checked).

Conventions: AP@k = (1/R_k) sum_{i<=k} rel_i P@i, and a query with R_k = 0 counts as 0 in
the mean over all queries; a cut-off k larger than the database is clipped to the database
size (for mAP@k, P@k and R@k alike, so P@k divides by the database size there); recall is 0
for a query with no relevant item (N+ = 0); precision within a radius is 0 when no item lies
within it (the query stays in the mean).

Optimistic / pessimistic mAP@k are the best and worst AP@k over all orders inside ties. With
k = all they are "relevant first / last inside ties". With a cut-off inside a tie group they
are not always that: AP@k divides by R_k, so letting one more relevant item of the cut group
into the top k can lower AP@k (it enters near position k with a low precision). The bounds
therefore also choose how many relevant items of the cut group enter the top k; this keeps
optimistic >= tie-aware >= pessimistic, which the plain relevant-first/last orders violate.

Modules: ``inputs`` (checks of options, codes and labels shared by every entry point;
relevance bitmaps; the chunk size), ``counting`` (CPU: the compiled rankings, numba),
``compiled`` (which CPU kernels rank; HASHBENCH_KERNELS), ``kernels`` (CPU: the numpy
Hamming distances and rankings), ``tie_aware`` (the closed forms), ``cuda`` (the rankings
with torch on a CUDA device), ``result`` (:class:`RetrievalResult` and the sums over
chunks), ``engine`` (the entry points).
"""

from hashbench.metrics.engine import DEFAULT_KS, evaluate, mean_average_precision
from hashbench.metrics.result import RetrievalResult

__all__ = ["DEFAULT_KS", "RetrievalResult", "evaluate", "mean_average_precision"]
