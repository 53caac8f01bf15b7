"""The evaluation engine against brute-force references written plainly here."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashbench.codes import pack
from hashbench.errors import UserError
from hashbench.metrics import evaluate, mean_average_precision

# --------------------------------------------------------------------------------------------
# reference: full stable sort per query, every metric straight from its definition


def reference_ranking(
    query_bits: np.ndarray,
    database_bits: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    query: int,
):
    distances = (query_bits[query][None, :] != database_bits).sum(1)
    order = np.argsort(distances, kind="stable")  # ties by database index
    relevant = (database_labels.astype(int) @ query_labels[query].astype(int)) > 0
    return distances, order, relevant


def reference_ap(ranked_relevant: np.ndarray, k: int) -> float:
    top = ranked_relevant[:k]
    hits = 0
    total = 0.0
    for i, rel in enumerate(top, start=1):
        if rel:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def reference(
    query_bits,
    database_bits,
    query_labels,
    database_labels,
    topk=None,
    ks=(1, 10, 100, 1000),
    radius=2,
):
    n = database_bits.shape[0]
    bits = database_bits.shape[1]
    k_map = n if topk is None else min(topk, n)
    aps, aps_all, p_at, r_at, p_rad, r_rad, hit = [], [], [], [], [], [], []
    curve_p, curve_r = [], []
    for q in range(query_bits.shape[0]):
        distances, order, relevant = reference_ranking(
            query_bits, database_bits, query_labels, database_labels, q
        )
        ranked = relevant[order]
        positives = relevant.sum()
        aps.append(reference_ap(ranked, k_map))
        hit.append(bool(ranked[:k_map].any()))
        aps_all.append(reference_ap(ranked, n))
        p_at.append([ranked[: min(k, n)].sum() / min(k, n) for k in ks])
        r_at.append([ranked[: min(k, n)].sum() / positives if positives else 0.0 for k in ks])
        # every radius at once (codes of 65,537 bits have 65,538 radii): (radii, items)
        inside = distances[None, :] <= np.arange(bits + 1)[:, None]
        items_inside = inside.sum(1)
        relevant_inside = (inside & relevant[None, :]).sum(1)
        row_p = np.divide(
            relevant_inside, items_inside, out=np.zeros(bits + 1), where=items_inside > 0
        )
        row_r = relevant_inside / positives if positives else np.zeros(bits + 1)
        curve_p.append(row_p)
        curve_r.append(row_r)
        p_rad.append(row_p[min(radius, bits)])
        r_rad.append(row_r[min(radius, bits)])
    return {
        "map": np.mean(aps),
        # TBH's released evaluator: the mean over the queries with a relevant item in the top k
        "map_hits": np.mean(np.asarray(aps)[hit]) if any(hit) else float("nan"),
        "map_all": np.mean(aps_all),
        "precision_at_k": dict(zip(ks, np.mean(p_at, 0), strict=True)),
        "recall_at_k": dict(zip(ks, np.mean(r_at, 0), strict=True)),
        "precision_radius": np.mean(p_rad),
        "recall_radius": np.mean(r_rad),
        "pr_precision": np.mean(curve_p, 0),
        "pr_recall": np.mean(curve_r, 0),
    }


def random_problem(
    rng, queries, database, bits, classes=5, multi_label=False, empty_rows=0.0, bias=0.5
):
    query_bits = rng.random((queries, bits)) < bias
    database_bits = rng.random((database, bits)) < bias
    if multi_label:
        query_labels = rng.random((queries, classes)) < 0.3
        database_labels = rng.random((database, classes)) < 0.3
        query_labels[rng.random(queries) < empty_rows] = False
        database_labels[rng.random(database) < empty_rows] = False
    else:
        query_labels = rng.integers(0, classes, queries)
        database_labels = rng.integers(0, classes, database)
    return query_bits, database_bits, query_labels, database_labels


def multi_hot(labels, classes):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(bool)
    out = np.zeros((labels.size, classes), dtype=bool)
    out[np.arange(labels.size), labels] = True
    return out


# The reference of a problem, computed once for both CPU kernels (cpu_kernels runs a test
# twice on the same problem): keyed by the problem's bytes and the options.
_REFERENCES: dict[str, dict] = {}


def cached_reference(query_bits, database_bits, query_labels, database_labels, **options):
    digest = hashlib.sha256(repr(sorted(options.items())).encode())
    for array in (query_bits, database_bits, query_labels, database_labels):
        array = np.ascontiguousarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    key = digest.hexdigest()
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(query_bits, database_bits, query_labels, database_labels, **options)
    return _REFERENCES[key]


def assert_matches_reference(problem, classes=5, **options):
    query_bits, database_bits, query_labels, database_labels = problem
    result = evaluate(query_bits, database_bits, query_labels, database_labels, **options)
    expected = cached_reference(
        query_bits,
        database_bits,
        multi_hot(query_labels, classes),
        multi_hot(database_labels, classes),
        topk=options.get("topk"),
        ks=options.get("ks", (1, 10, 100, 1000)),
        radius=options.get("radius", 2),
    )
    assert result.map == pytest.approx(expected["map"], abs=1e-12)
    assert result.map_all == pytest.approx(expected["map_all"], abs=1e-12)
    assert result.map_hits == pytest.approx(expected["map_hits"], abs=1e-12, nan_ok=True)
    for k, value in expected["precision_at_k"].items():
        assert result.precision_at_k[k] == pytest.approx(value, abs=1e-12)
        assert result.recall_at_k[k] == pytest.approx(expected["recall_at_k"][k], abs=1e-12)
    assert result.precision_radius == pytest.approx(expected["precision_radius"], abs=1e-12)
    assert result.recall_radius == pytest.approx(expected["recall_radius"], abs=1e-12)
    np.testing.assert_allclose(result.pr_precision, expected["pr_precision"], atol=1e-12)
    np.testing.assert_allclose(result.pr_recall, expected["pr_recall"], atol=1e-12)
    assert result.map_optimistic + 1e-12 >= result.map_tie_aware >= result.map_pessimistic - 1e-12
    return result


# --------------------------------------------------------------------------------------------
# exactness against the reference


@pytest.mark.parametrize("bits", [4, 8, 12, 64])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("topk", [None, 1, 17, 150, 200, 1000])
def test_matches_reference(bits, multi_label, topk, cpu_kernels):
    rng = np.random.default_rng(bits * 1000 + (topk or 0) + multi_label)
    problem = random_problem(rng, 23, 200, bits, multi_label=multi_label, empty_rows=0.1)
    assert_matches_reference(problem, topk=topk, ks=(1, 5, 50, 200, 500))


def test_database_of_one_item_and_single_query(cpu_kernels):
    rng = np.random.default_rng(1)
    assert_matches_reference(random_problem(rng, 1, 1, 8), topk=10)
    assert_matches_reference(random_problem(rng, 1, 40, 8), topk=10)


def test_queries_without_relevant_items_count_as_zero(cpu_kernels):
    rng = np.random.default_rng(2)
    query_bits, database_bits, _, _ = random_problem(rng, 6, 50, 8)
    query_labels = np.array([0, 0, 0, 1, 1, 1])
    database_labels = np.zeros(50, dtype=int)  # class 1 never occurs in the database
    database_labels_mh = multi_hot(database_labels, 2)
    result = assert_matches_reference(
        (query_bits, database_bits, query_labels, database_labels_mh), classes=2, topk=10
    )
    zero = evaluate(query_bits[3:], database_bits, query_labels[3:], database_labels_mh)
    assert zero.map == zero.map_tie_aware == zero.map_all == 0.0
    assert zero.recall_at_k[10] == 0.0
    assert result.map == pytest.approx(
        evaluate(query_bits[:3], database_bits, query_labels[:3], database_labels_mh, topk=10).map
        / 2
    )


def test_all_zero_label_rows_are_never_relevant(cpu_kernels):
    rng = np.random.default_rng(3)
    problem = random_problem(rng, 15, 120, 8, multi_label=True, empty_rows=0.5)
    assert_matches_reference(problem, topk=30)


def test_single_label_and_multi_hot_forms_agree():
    rng = np.random.default_rng(4)
    query_bits, database_bits, query_labels, database_labels = random_problem(rng, 20, 150, 12)
    ids = evaluate(query_bits, database_bits, query_labels, database_labels, topk=40).to_dict()
    hot = evaluate(
        query_bits,
        database_bits,
        multi_hot(query_labels, 5),
        multi_hot(database_labels, 5),
        topk=40,
    ).to_dict()
    assert ids == hot


def test_packed_and_sign_inputs_agree():
    rng = np.random.default_rng(5)
    for bits in (5, 12, 64, 70):
        query_bits, database_bits, query_labels, database_labels = random_problem(
            rng, 9, 80, bits, multi_label=True
        )
        base = evaluate(query_bits, database_bits, query_labels, database_labels, topk=20).to_dict()
        packed = evaluate(
            pack(query_bits), pack(database_bits), query_labels, database_labels, bits=bits, topk=20
        )
        signs = evaluate(
            np.where(query_bits, 1.0, -1.0),
            np.where(database_bits, 1, -1).astype(np.int8),
            query_labels,
            database_labels,
            topk=20,
        )
        zero_one = evaluate(
            query_bits.astype(np.uint8),
            database_bits.astype(np.int64),
            query_labels,
            database_labels,
            topk=20,
        )
        assert packed.to_dict() == base
        assert signs.to_dict() == base
        assert zero_one.to_dict() == base


def test_packed_padding_bits_are_ignored():
    rng = np.random.default_rng(6)
    query_bits, database_bits, query_labels, database_labels = random_problem(rng, 7, 60, 12)
    query_packed = pack(query_bits)
    database_packed = pack(database_bits)
    base = evaluate(query_packed, database_packed, query_labels, database_labels, bits=12).to_dict()
    database_packed[:, -1] |= 0x0F  # garbage in the 4 padding bits
    assert (
        evaluate(query_packed, database_packed, query_labels, database_labels, bits=12).to_dict()
        == base
    )


def test_chunk_size_does_not_change_results(cpu_kernels):
    rng = np.random.default_rng(7)
    problem = random_problem(rng, 31, 150, 8, multi_label=True)
    results = [evaluate(*problem, topk=25, chunk_size=size).to_dict() for size in (1, 4, 31, 1000)]
    assert all(result == results[0] for result in results)


def test_mean_average_precision_equals_evaluate_map(cpu_kernels):
    rng = np.random.default_rng(8)
    for multi_label in (False, True):
        problem = random_problem(rng, 25, 300, 8, multi_label=multi_label)
        for topk in (None, 1, 30, 299, 300, 5000):
            full = evaluate(*problem, topk=topk).map
            assert mean_average_precision(*problem, topk=topk) == pytest.approx(full, abs=1e-15)
            assert mean_average_precision(*problem, topk=topk, chunk_size=3) == pytest.approx(
                full, abs=1e-15
            )


def test_map_only_does_not_depend_on_the_cutoff_guess(monkeypatch):
    from hashbench.metrics import kernels

    monkeypatch.setenv("HASHBENCH_KERNELS", "numpy")  # the guess of the numpy kernels
    rng = np.random.default_rng(13)
    problem = random_problem(rng, 20, 400, 10, multi_label=True)
    expected = evaluate(*problem, topk=40).map
    for guess in (0, 3, 10):  # too small (exact fallback), about right, everything

        def fixed(distances, depth, groups, value=guess):
            return np.full(distances.shape[0], value, dtype=np.intp)

        monkeypatch.setattr(kernels, "guess_thresholds", fixed)
        assert mean_average_precision(*problem, topk=40) == pytest.approx(expected, abs=1e-15)


def test_k_above_database_size_is_clipped():
    rng = np.random.default_rng(9)
    problem = random_problem(rng, 10, 30, 8)
    result = evaluate(*problem, topk=100, ks=(30, 100))
    assert result.map_k == 30
    assert result.map == result.map_all
    assert result.precision_at_k[100] == result.precision_at_k[30]
    assert result.recall_at_k[100] == result.recall_at_k[30]


def test_to_dict_is_json_and_named_by_radius():
    rng = np.random.default_rng(10)
    problem = random_problem(rng, 5, 40, 6)
    data = evaluate(*problem, topk=10, radius=3, ks=(1, 5)).to_dict()
    json.dumps(data)
    for key in (
        "map",
        "map_k",
        "map_all",
        "map_tie_aware",
        "map_optimistic",
        "map_pessimistic",
        "num_queries",
        "num_database",
        "bits",
    ):
        assert key in data
    assert "precision_radius3" in data and "recall_radius3" in data
    assert list(data["precision_at_k"]) == ["1", "5"]
    assert data["pr_curve"]["radius"] == list(range(7))
    assert data["map_k"] == 10 and data["bits"] == 6


# --------------------------------------------------------------------------------------------
# long codes: distances above 255 and 65,535


def tie_heavy_problem(rng, bits, queries, database, multi_label):
    """Codes from three patterns (all zeros, all ones, half ones), each with a few of its
    first 4 bits flipped: distances take a handful of values from 0 up to ``bits``, so
    nearly every item ties with others and the largest distances occur."""
    patterns = np.zeros((3, bits), dtype=bool)
    patterns[1] = True
    patterns[2, : bits // 2] = True

    def codes(count):
        out = patterns[rng.integers(0, 3, count)]
        out[:, :4] ^= rng.random((count, 4)) < 0.3
        return out

    query_bits, database_bits = codes(queries), codes(database)
    if multi_label:
        query_labels = rng.random((queries, 3)) < 0.4
        database_labels = rng.random((database, 3)) < 0.4
    else:
        query_labels = rng.integers(0, 3, queries)
        database_labels = rng.integers(0, 3, database)
    return query_bits, database_bits, query_labels, database_labels


LONG_CODE_BITS = [255, 256, 65535, 65536, 65537]


@pytest.mark.parametrize("bits", LONG_CODE_BITS)
def test_long_codes_match_reference(bits, cpu_kernels):
    rng = np.random.default_rng(bits)
    problem = tie_heavy_problem(rng, bits, 5, 60, multi_label=bits % 2 == 0)
    query_bits, database_bits = problem[:2]
    largest = max((query_bits[q] != database_bits).sum(1).max() for q in range(5))
    assert largest >= bits - 4  # the top of the distance range is exercised
    for topk in (None, 7, 25):
        result = assert_matches_reference(problem, classes=3, topk=topk, ks=(1, 10, 60))
        assert result.bits == bits
        assert mean_average_precision(*problem, topk=topk) == pytest.approx(result.map, abs=1e-15)
    packed = evaluate(pack(query_bits), pack(database_bits), *problem[2:], bits=bits, topk=7)
    assert packed.to_dict() == evaluate(*problem, topk=7).to_dict()


@pytest.mark.parametrize("bits", LONG_CODE_BITS)
def test_long_codes_tie_aware_exact_over_all_tie_orders(bits, cpu_kernels):
    rng = np.random.default_rng(bits + 1)
    problem = tie_heavy_problem(rng, bits, 3, 7, multi_label=True)
    query_bits, database_bits, query_labels, database_labels = problem
    for topk in (2, 4, 7):
        result = evaluate(*problem, topk=topk)
        expected, best, worst = [], [], []
        for q in range(3):
            distances, _, relevant = reference_ranking(
                query_bits, database_bits, query_labels, database_labels, q
            )
            values = [reference_ap(relevant[order], topk) for order in all_tie_orders(distances)]
            expected.append(np.mean(values))
            best.append(max(values))
            worst.append(min(values))
        assert result.map_tie_aware == pytest.approx(np.mean(expected), abs=1e-12)
        assert result.map_optimistic == pytest.approx(np.mean(best), abs=1e-12)
        assert result.map_pessimistic == pytest.approx(np.mean(worst), abs=1e-12)


def test_far_items_rank_last_above_65535_bits():
    # the item at distance 65,537 must rank after the one at distance 1 (a 16-bit distance
    # wraps to 1 and would tie them, the far item first by index)
    bits = 65537
    query = np.zeros((1, bits), dtype=bool)
    database = np.zeros((2, bits), dtype=bool)
    database[0] = True
    database[1, 0] = True
    result = evaluate(query, database, np.array([0]), np.array([1, 0]), topk=1)
    assert result.map == 1.0 and result.map_all == 1.0
    assert result.pr_precision[1] == 1.0 and result.pr_precision[-1] == 0.5


def test_group_counts_with_the_widest_keys_of_a_type():
    # 255 bits and 2**22 + 1 items fill a 32-bit key exactly (8 distance bits, 23 index
    # bits, the relevant bit); the end of the last group, 256 << 24, needs a 33rd bit
    from hashbench.metrics import kernels

    size = 2**22 + 1
    rng = np.random.default_rng(14)
    distances = rng.integers(0, 256, (1, size)).astype(np.uint8)
    relevant = rng.random(size) < 0.5
    ranking = kernels.whole_ranking(distances, np.packbits(relevant)[None, :], 256, 10, ())
    np.testing.assert_array_equal(ranking.counts[0], np.bincount(distances[0], minlength=256))
    np.testing.assert_array_equal(
        ranking.relevant_counts[0], np.bincount(distances[0][relevant], minlength=256)
    )


# --------------------------------------------------------------------------------------------
# tie-aware mAP


def ap_tie_aware_monte_carlo(
    query_bits, database_bits, query_labels, database_labels, k, rng, samples
):
    """AP@k per query for many random orders inside ties: (queries, samples)."""
    out = np.zeros((query_bits.shape[0], samples))
    for q in range(query_bits.shape[0]):
        distances, _, relevant = reference_ranking(
            query_bits, database_bits, query_labels, database_labels, q
        )
        for s in range(samples):
            order = np.lexsort((rng.random(distances.size), distances))
            out[q, s] = reference_ap(relevant[order], k)
    return out


def all_tie_orders(distances: np.ndarray):
    """Every ranking that sorts by distance, with any order inside equal distances."""
    groups = [list(np.flatnonzero(distances == d)) for d in np.unique(distances)]
    for parts in itertools.product(*(itertools.permutations(group) for group in groups)):
        yield np.array([i for part in parts for i in part])


@pytest.mark.parametrize(
    "bits,topk,multi_label",
    [(3, 10, False), (4, 25, True), (6, 7, False), (8, None, True), (2, 40, True)],
)
def test_tie_aware_matches_monte_carlo(bits, topk, multi_label):
    rng = np.random.default_rng(bits * 7 + (topk or 0))
    problem = random_problem(rng, 12, 90, bits, multi_label=multi_label)
    query_bits, database_bits, query_labels, database_labels = problem
    result = evaluate(*problem, topk=topk)
    k = 90 if topk is None else topk
    samples = ap_tie_aware_monte_carlo(
        query_bits,
        database_bits,
        multi_hot(query_labels, 5),
        multi_hot(database_labels, 5),
        k,
        rng,
        400,
    )
    per_sample_map = samples.mean(0)
    standard_error = per_sample_map.std(ddof=1) / np.sqrt(per_sample_map.size)
    assert abs(result.map_tie_aware - per_sample_map.mean()) <= 4 * standard_error + 1e-9
    assert samples.max(1).mean() <= result.map_optimistic + 1e-12
    assert samples.min(1).mean() >= result.map_pessimistic - 1e-12


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_and_bounds_exact_over_all_tie_orders(seed, cpu_kernels):
    rng = np.random.default_rng(200 + seed)
    database = int(rng.integers(1, 8))
    bits = int(rng.integers(1, 4))
    problem = random_problem(rng, 3, database, bits, classes=3, multi_label=True, empty_rows=0.2)
    query_bits, database_bits, query_labels, database_labels = problem
    topk = int(rng.integers(1, database + 2))
    result = evaluate(*problem, topk=topk)
    expected, best, worst = [], [], []
    for q in range(3):
        distances, _, relevant = reference_ranking(
            query_bits, database_bits, query_labels, database_labels, q
        )
        values = [
            reference_ap(relevant[order], min(topk, database))
            for order in all_tie_orders(distances)
        ]
        expected.append(np.mean(values))
        best.append(max(values))
        worst.append(min(values))
    assert result.map_tie_aware == pytest.approx(np.mean(expected), abs=1e-12)
    assert result.map_optimistic == pytest.approx(np.mean(best), abs=1e-12)
    assert result.map_pessimistic == pytest.approx(np.mean(worst), abs=1e-12)


def test_tie_aware_exact_on_a_tiny_case(cpu_kernels):
    # one relevant item at distance 0, then a tie group of 4 items (1 relevant) cut at k = 3:
    # the group's relevant item lands at position 2, 3 or outside, each w.p. 1/4, 1/4, 1/2
    query = np.array([[0, 0]])
    database = np.array([[0, 0], [0, 1], [0, 1], [1, 0], [1, 0]])
    query_labels = np.array([0])
    database_labels = np.array([0, 0, 1, 1, 1])
    result = evaluate(query, database, query_labels, database_labels, topk=3)
    expected = 0.25 * (1 + 2 / 2) / 2 + 0.25 * (1 + 2 / 3) / 2 + 0.5 * 1.0
    assert result.map_tie_aware == pytest.approx(expected, abs=1e-15)
    assert result.map == 1.0  # ties by index: relevant item 1 is at position 2
    assert result.map_optimistic == 1.0
    assert result.map_pessimistic == pytest.approx((1 + 2 / 3) / 2)


def test_bounds_choose_how_many_relevant_items_enter_a_cut_group(cpu_kernels):
    # distance 0: relevant; distance 1: not relevant; distance 2: ten items, one relevant,
    # and k = 3 cuts that group after its first item. Letting the relevant one in gives
    # AP = (1 + 2/3) / 2; keeping it out gives AP = 1: relevant-first is the worst order here.
    bits = 8
    query = np.zeros((1, bits), dtype=bool)
    database = np.zeros((12, bits), dtype=bool)
    database[1, 0] = True
    database[2:, :2] = True
    labels = np.array([0, 1, 0] + [1] * 9)
    result = evaluate(query, database, np.array([0]), labels, topk=3)
    assert result.map == pytest.approx((1 + 2 / 3) / 2)  # the relevant one has index 2
    assert result.map_optimistic == 1.0
    assert result.map_pessimistic == pytest.approx((1 + 2 / 3) / 2)
    assert result.map_tie_aware == pytest.approx(0.1 * (1 + 2 / 3) / 2 + 0.9 * 1.0)


def test_without_ties_all_variants_agree():
    rng = np.random.default_rng(11)
    # distinct distances: database item i at distance i from the all-zero query
    bits = 40
    database = np.tril(np.ones((bits, bits), dtype=bool), -1)[rng.permutation(bits)]
    query = np.zeros((1, bits), dtype=bool)
    labels = rng.integers(0, 3, bits)
    result = evaluate(query, database, np.array([labels[0]]), labels, topk=15)
    assert result.map == pytest.approx(result.map_tie_aware, abs=1e-12)
    assert result.map_optimistic == pytest.approx(result.map, abs=1e-12)
    assert result.map_pessimistic == pytest.approx(result.map, abs=1e-12)


# --------------------------------------------------------------------------------------------
# input errors


def test_input_errors_are_user_errors():
    rng = np.random.default_rng(12)
    query_bits, database_bits, query_labels, database_labels = random_problem(rng, 4, 20, 8)
    with pytest.raises(UserError, match="query codes have 4 rows but query labels have 3"):
        evaluate(query_bits, database_bits, query_labels[:3], database_labels)
    with pytest.raises(UserError, match="database codes have 20 rows"):
        evaluate(query_bits, database_bits, query_labels, database_labels[:5])
    with pytest.raises(UserError, match="8 bits but database codes have 9"):
        evaluate(query_bits, np.ones((20, 9)), query_labels, database_labels)
    with pytest.raises(UserError, match="zero"):
        evaluate(
            np.where(query_bits, 1, 0) - np.where(query_bits, 0, 1) * (rng.random((4, 8)) < 0.5),
            database_bits,
            query_labels,
            database_labels,
        )
    with pytest.raises(UserError, match="NaN"):
        evaluate(np.full((4, 8), np.nan), database_bits, query_labels, database_labels)
    with pytest.raises(UserError, match="bit-packed"):
        evaluate(pack(query_bits), pack(database_bits), query_labels, database_labels)
    with pytest.raises(UserError, match="classes"):
        evaluate(
            query_bits, database_bits, multi_hot(query_labels, 5), multi_hot(database_labels, 6)
        )
    with pytest.raises(UserError, match="topk"):
        evaluate(query_bits, database_bits, query_labels, database_labels, topk=0)
    with pytest.raises(UserError, match="ks"):
        evaluate(query_bits, database_bits, query_labels, database_labels, ks=(1, -3))
    with pytest.raises(UserError, match="integers"):
        evaluate(query_bits, database_bits, np.array([0.0, np.nan, 1.0, 2.0]), database_labels)
    with pytest.raises(UserError, match=">= 0"):
        evaluate(query_bits, database_bits, query_labels, -np.ones(20, dtype=int))
    with pytest.raises(UserError, match="empty"):
        evaluate(query_bits, database_bits[:0], query_labels, database_labels[:0])


def test_one_column_labels_are_refused_as_ambiguous():
    # (n, 1) of 0/1 could be class ids (class 0 items relevant to each other) or a one-class
    # multi-hot matrix (class 0 items never relevant): the two give different numbers
    rng = np.random.default_rng(15)
    query_bits, database_bits, _, _ = random_problem(rng, 30, 200, 16)
    query_ids = rng.integers(0, 2, 30)
    database_ids = rng.integers(0, 2, 200)
    as_ids = evaluate(query_bits, database_bits, query_ids, database_ids)
    as_multi_hot = evaluate(
        query_bits, database_bits, multi_hot(query_ids, 2), multi_hot(database_ids, 2)
    )
    assert as_ids.to_dict() == as_multi_hot.to_dict()
    one_class = np.stack([database_ids, np.zeros_like(database_ids)], axis=1)
    query_one_class = np.stack([query_ids, np.zeros_like(query_ids)], axis=1)
    assert evaluate(query_bits, database_bits, query_one_class, one_class).map < as_ids.map
    for column in (database_ids[:, None], (database_ids[:, None] * 3), database_ids[:, None] > 0):
        for query_labels, database_labels, side in (
            (query_ids, column, "database labels"),
            (column[:30], database_ids, "query labels"),
        ):
            for function in (evaluate, mean_average_precision):
                with pytest.raises(UserError) as error:
                    function(query_bits, database_bits, query_labels, database_labels)
                message = str(error.value)
                assert message.startswith(f"{side} have shape")
                assert "ambiguous" in message and "(n,)" in message and "C >= 2" in message


# --------------------------------------------------------------------------------------------
# properties


# cpu_kernels only sets an environment variable, the same for every example
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    bits=st.integers(1, 10),
    queries=st.integers(1, 6),
    database=st.integers(1, 40),
    topk=st.one_of(st.none(), st.integers(1, 60)),
    multi_label=st.booleans(),
    bias=st.sampled_from([0.1, 0.5, 0.9]),
)
def test_property_matches_reference(
    seed, bits, queries, database, topk, multi_label, bias, cpu_kernels
):
    rng = np.random.default_rng(seed)
    problem = random_problem(
        rng, queries, database, bits, classes=3, multi_label=multi_label, empty_rows=0.2, bias=bias
    )
    result = assert_matches_reference(problem, classes=3, topk=topk, ks=(1, 3, 50))
    tolerance = 1e-12  # closed forms and direct sums round differently
    assert -tolerance <= result.map_pessimistic <= result.map_tie_aware + tolerance
    assert result.map_tie_aware <= result.map_optimistic + tolerance <= 1.0 + 2 * tolerance
    assert result.map_pessimistic - 1e-12 <= result.map <= result.map_optimistic + 1e-12


# --------------------------------------------------------------------------------------------
# torch path (CUDA tensors); its logic also runs on CPU tensors when called directly


def torch_problems():
    rng = np.random.default_rng(21)
    for bits, multi_label, topk in (
        (4, False, 30),
        (12, True, None),
        (64, True, 7),
        (70, False, 500),
    ):
        yield random_problem(rng, 17, 150, bits, multi_label=multi_label, empty_rows=0.1), topk


def test_torch_path_logic_matches_numpy_on_cpu_tensors():
    torch = pytest.importorskip("torch")
    from hashbench.metrics import engine

    for (query_bits, database_bits, query_labels, database_labels), topk in torch_problems():
        expected = evaluate(query_bits, database_bits, query_labels, database_labels, topk=topk)
        result = engine.evaluate_on(
            torch.device("cpu"),
            torch.from_numpy(np.where(query_bits, 1.0, -1.0)).float(),
            torch.from_numpy(pack(database_bits)),
            query_labels,
            database_labels,
            bits=database_bits.shape[1],
            topk=topk,
            chunk_size=5,
        )
        assert _close(result, expected)


def _close(result, expected) -> bool:
    left, right = result.to_dict(), expected.to_dict()
    for key, value in right.items():
        if value is None:
            assert left[key] is None
        elif isinstance(value, dict):
            for inner, item in value.items():
                np.testing.assert_allclose(left[key][inner], item, atol=1e-12)
        else:
            np.testing.assert_allclose(left[key], value, atol=1e-12)
    return True


@pytest.mark.cuda
def test_cuda_tensors_are_evaluated_on_the_device():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    for (query_bits, database_bits, query_labels, database_labels), topk in torch_problems():
        expected = evaluate(query_bits, database_bits, query_labels, database_labels, topk=topk)
        on_device = evaluate(
            torch.from_numpy(query_bits).cuda(),
            torch.from_numpy(np.where(database_bits, 1, -1)).cuda(),
            torch.from_numpy(np.asarray(query_labels)).cuda(),
            database_labels,
            topk=topk,
        )
        assert _close(on_device, expected)
        assert mean_average_precision(
            torch.from_numpy(pack(query_bits)).cuda(),
            torch.from_numpy(pack(database_bits)).cuda(),
            query_labels,
            database_labels,
            bits=query_bits.shape[1],
            topk=topk,
        ) == pytest.approx(expected.map, abs=1e-12)
    signs = torch.ones((2, 8), device="cuda")
    signs[0, :4] = -1
    signs[1, 5] = 0  # a sign() of zero
    with pytest.raises(UserError, match="1 zeros"):
        evaluate(signs, torch.ones((5, 8)).cuda(), [0, 1], [0, 1, 0, 1, 1])
    with pytest.raises(UserError, match="NaN"):
        evaluate(signs / 0, torch.ones((5, 8)).cuda(), [0, 1], [0, 1, 0, 1, 1])
    with pytest.raises(UserError, match="database codes have 5 rows"):
        evaluate(signs.abs(), torch.ones((5, 8)).cuda(), [0, 1], [0, 1, 0, 1])
