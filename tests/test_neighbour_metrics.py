"""Per-query relevance (true nearest neighbours) in the evaluation engine, and the exact
nearest-neighbour ground truth, both against plain references written here."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from test_metrics import cached_reference, reference_ap

from hashbench.codes import pack
from hashbench.data.neighbours import exact_neighbours
from hashbench.errors import UserError
from hashbench.metrics import evaluate, mean_average_precision

# --------------------------------------------------------------------------------------------
# references


def relevance_as_labels(neighbours: np.ndarray, database: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels under which "shares a label" is "is one of the query's neighbours": query q has
    class q alone, database item j every class q whose list holds j."""
    queries = neighbours.shape[0]
    query_labels = np.eye(queries, dtype=bool)
    database_labels = np.zeros((database, queries), dtype=bool)
    for q, row in enumerate(neighbours):
        database_labels[row[row >= 0], q] = True
    return query_labels, database_labels


def plain_recall_at(query_bits, database_bits, neighbours, r: int) -> float:
    """recall@R: the share of each query's true neighbours among its first R items of the
    Hamming ranking (ties by database index), averaged over the queries."""
    values = []
    for q in range(query_bits.shape[0]):
        distances = (query_bits[q][None, :] != database_bits).sum(1)
        top = np.argsort(distances, kind="stable")[:r]
        truth = set(neighbours[q][neighbours[q] >= 0].tolist())
        values.append(len(truth & set(top.tolist())) / len(truth) if truth else 0.0)
    return float(np.mean(values))


def tie_heavy(rng, queries, database, bits, k):
    """Few bits and duplicated codes: large equal-distance groups everywhere."""
    prototypes = rng.random((4, bits)) < 0.5
    database_bits = prototypes[rng.integers(0, 4, database)] ^ (rng.random((database, bits)) < 0.1)
    query_bits = prototypes[rng.integers(0, 4, queries)] ^ (rng.random((queries, bits)) < 0.1)
    neighbours = np.stack([rng.choice(database, size=k, replace=False) for _ in range(queries)])
    return query_bits, database_bits, neighbours


# --------------------------------------------------------------------------------------------
# the engine with per-query relevance


@pytest.mark.parametrize("bits", [2, 4, 8, 64])
@pytest.mark.parametrize("topk", [None, 1, 7, 50, 500])
def test_neighbour_relevance_matches_the_reference(bits, topk, cpu_kernels):
    rng = np.random.default_rng(bits * 100 + (topk or 0))
    query_bits, database_bits, neighbours = tie_heavy(rng, 19, 150, bits, k=10)
    ks = (1, 5, 10, 50, 100, 1000)
    result = evaluate(query_bits, database_bits, relevance=neighbours, topk=topk, ks=ks)
    query_labels, database_labels = relevance_as_labels(neighbours, 150)
    expected = cached_reference(query_bits, database_bits, query_labels, database_labels, topk=topk, ks=ks)
    assert result.map == pytest.approx(expected["map"], abs=1e-12)
    assert result.map_all == pytest.approx(expected["map_all"], abs=1e-12)
    for k in ks:
        assert result.recall_at_k[k] == pytest.approx(expected["recall_at_k"][k], abs=1e-12)
        assert result.precision_at_k[k] == pytest.approx(expected["precision_at_k"][k], abs=1e-12)
        assert result.recall_at_k[k] == pytest.approx(plain_recall_at(query_bits, database_bits, neighbours, k), abs=1e-12)
    np.testing.assert_allclose(result.pr_precision, expected["pr_precision"], atol=1e-12)
    np.testing.assert_allclose(result.pr_recall, expected["pr_recall"], atol=1e-12)
    # the same as the label path under labels that encode the lists, every metric
    through_labels = evaluate(query_bits, database_bits, query_labels, database_labels, topk=topk, ks=ks)
    assert result.to_dict() == through_labels.to_dict()


def test_recall_at_r_from_1_to_1000_against_a_plain_reference(cpu_kernels):
    rng = np.random.default_rng(5)
    query_bits, database_bits, neighbours = tie_heavy(rng, 12, 1200, 6, k=25)
    ks = tuple(range(1, 1001, 37)) + (1000,)
    result = evaluate(query_bits, database_bits, relevance=neighbours, ks=ks)
    for r in ks:
        assert result.recall_at_k[r] == pytest.approx(plain_recall_at(query_bits, database_bits, neighbours, r), abs=1e-12)


def test_tie_aware_map_against_neighbours_is_exact_over_all_tie_orders(cpu_kernels):
    rng = np.random.default_rng(11)
    for _ in range(8):
        database = int(rng.integers(2, 8))
        query_bits = rng.random((3, 2)) < 0.5
        database_bits = rng.random((database, 2)) < 0.5
        neighbours = [rng.choice(database, size=int(rng.integers(0, database + 1)), replace=False) for _ in range(3)]
        topk = int(rng.integers(1, database + 2))
        result = evaluate(query_bits, database_bits, relevance=neighbours, topk=topk)
        expected, best, worst = [], [], []
        for q in range(3):
            distances = (query_bits[q][None, :] != database_bits).sum(1)
            relevant = np.zeros(database, dtype=bool)
            relevant[neighbours[q]] = True
            groups = [list(np.flatnonzero(distances == d)) for d in np.unique(distances)]
            values = []
            for parts in itertools.product(*(itertools.permutations(group) for group in groups)):
                order = np.array([i for part in parts for i in part])
                values.append(reference_ap(relevant[order], min(topk, database)))
            expected.append(np.mean(values))
            best.append(max(values))
            worst.append(min(values))
        assert result.map_tie_aware == pytest.approx(np.mean(expected), abs=1e-12)
        assert result.map_optimistic == pytest.approx(np.mean(best), abs=1e-12)
        assert result.map_pessimistic == pytest.approx(np.mean(worst), abs=1e-12)


def test_ragged_lists_padding_packed_codes_chunks_and_map_only_agree(cpu_kernels):
    rng = np.random.default_rng(3)
    query_bits, database_bits, neighbours = tie_heavy(rng, 30, 333, 12, k=9)
    padded = neighbours.copy()
    padded[::3, 5:] = -1  # every third query has 5 neighbours only
    ragged = [row[row >= 0] for row in padded]
    base = evaluate(query_bits, database_bits, relevance=padded, topk=40)
    assert evaluate(query_bits, database_bits, relevance=ragged, topk=40).to_dict() == base.to_dict()
    packed = evaluate(pack(query_bits), pack(database_bits), relevance=padded, bits=12, topk=40, chunk_size=7)
    assert packed.to_dict() == base.to_dict()
    assert mean_average_precision(query_bits, database_bits, relevance=padded, topk=40) == pytest.approx(base.map, abs=1e-12)


def test_torch_path_logic_with_neighbour_lists_matches_numpy_on_cpu_tensors():
    torch = pytest.importorskip("torch")
    from hashbench.metrics import engine

    rng = np.random.default_rng(8)
    query_bits, database_bits, neighbours = tie_heavy(rng, 17, 140, 10, k=12)
    neighbours[4, 3:] = -1
    expected = evaluate(query_bits, database_bits, relevance=neighbours, topk=30)
    result = engine.evaluate_on(
        torch.device("cpu"),
        torch.from_numpy(query_bits),
        torch.from_numpy(database_bits),
        relevance=torch.from_numpy(neighbours),
        topk=30,
        chunk_size=5,
    )
    for key, value in expected.to_dict().items():
        if isinstance(value, dict):
            for inner, item in value.items():
                np.testing.assert_allclose(result.to_dict()[key][inner], item, atol=1e-12)
        else:
            np.testing.assert_allclose(result.to_dict()[key], value, atol=1e-12)


def test_bad_relevance_is_one_clear_error():
    codes = np.zeros((2, 8), dtype=bool)
    database = np.ones((5, 8), dtype=bool)
    with pytest.raises(UserError, match="not both"):
        evaluate(codes, database, [0, 1], [0, 1, 0, 1, 1], relevance=[[0], [1]])
    with pytest.raises(UserError, match="labels are needed, or relevance"):
        evaluate(codes, database)
    with pytest.raises(UserError, match="3 rows but there are 2 queries"):
        evaluate(codes, database, relevance=np.zeros((3, 2), dtype=int))
    with pytest.raises(UserError, match="position 5, but the database has 5"):
        evaluate(codes, database, relevance=[[0, 5], [1]])
    with pytest.raises(UserError, match="twice"):
        evaluate(codes, database, relevance=[[0, 0], [1]])
    with pytest.raises(UserError, match="integers"):
        evaluate(codes, database, relevance=np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# exact nearest neighbours


def brute_force(queries, database, k, metric):
    """Every distance, one stable sort per query: ties by database index. On integer vectors
    both are exact: squared Euclidean distances in float64, and cosine similarity ordered by
    sign(x.y) (x.y)^2 / (|x|^2 |y|^2) in rational arithmetic."""
    out = []
    for query in queries.astype(np.int64):
        if metric == "cosine":
            keys = [
                -Fraction(int(np.sign(dot)) * int(dot) ** 2, int(query @ query) * int(row @ row))
                for row in database.astype(np.int64)
                for dot in [row @ query]
            ]
        else:
            keys = list(((database.astype(np.int64) - query) ** 2).sum(1))
        out.append(sorted(range(len(keys)), key=lambda i, keys=keys: (keys[i], i))[:k])
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_exact_neighbours_match_brute_force_on_data_full_of_ties(metric, k):
    rng = np.random.default_rng(k)
    # small integer vectors, many of them repeated: equal distances everywhere
    database = rng.integers(-2, 3, size=(300, 6)).astype(np.float32)
    database[100:160] = database[:60]
    queries = np.concatenate([database[:10], rng.integers(-2, 3, size=(25, 6)).astype(np.float32)])
    if metric == "cosine":
        database[np.all(database == 0, axis=1)] = 1.0
        queries[np.all(queries == 0, axis=1)] = 1.0
        # parallel vectors tie under cosine (exactly, in floating point too, when the lengths
        # differ by a power of two)
        database[200:210] = 4 * database[:10]
    found = exact_neighbours(queries, database, k, metric=metric, memory_mb=0.01)
    expected = brute_force(queries, database, k, metric)
    np.testing.assert_array_equal(found, expected)


def test_exact_neighbours_with_far_offset_data_and_k_beyond_the_database():
    rng = np.random.default_rng(2)
    # a large common offset: float32 scores lose the small differences, the exact re-ranking
    # must not (integers, so that the reference's float64 distances are exact)
    database = (10**5 + rng.integers(-3, 4, size=(500, 16))).astype(np.float64)
    queries = (10**5 + rng.integers(-3, 4, size=(7, 16))).astype(np.float64)
    np.testing.assert_array_equal(
        exact_neighbours(queries, database, 20), brute_force(queries, database, 20, "euclidean")
    )
    everything = exact_neighbours(queries[:2], database[:5], 9)
    np.testing.assert_array_equal(everything, brute_force(queries[:2], database[:5], 5, "euclidean"))


def test_exact_neighbours_where_float32_rounding_exceeds_the_gaps():
    # tight clusters far from the origin in every direction (centring cannot remove that):
    # float32 scores err by about 10 while neighbour distances differ by 1, and tie often
    rng = np.random.default_rng(4)
    centres = rng.integers(-1000, 1001, size=(20, 16))
    database = (np.repeat(centres, 25, axis=0) + rng.integers(-2, 3, size=(500, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 30)] + rng.integers(-2, 3, size=(30, 16))).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        np.testing.assert_array_equal(
            exact_neighbours(queries, database, 12, metric=metric, memory_mb=0.02),
            brute_force(queries, database, 12, metric),
        )
