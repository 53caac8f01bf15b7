"""The two CPU ranking kernels of the evaluation engine: the compiled counting kernels (numba)
and the numpy sorts give the same values bit for bit, and the brute-force reference's, on codes
full of ties at every word boundary of the code length, for labels and per-query relevance;
the mAP-only path's guessed cut-off; the choice of kernel and the fallback to numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_metrics import multi_hot, reference

from hashbench.errors import UserError
from hashbench.metrics import evaluate, kernel_choice, mean_average_precision

ROOT = Path(__file__).resolve().parent.parent

# every side of the 8-, 32-, 64- and 256-bit boundaries (bytes, words, uint8 distances)
BITS = [1, 7, 8, 9, 16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257]
RELEVANCE = ["single-label", "multi-label", "neighbours"]


def tied_problem(rng, bits, queries, database, relevance):
    """Codes near four prototypes (a few bits flipped): few distinct distances and long ties.
    Relevance as class ids, multi-hot rows (some empty) or per-query lists (padded with -1,
    some empty)."""
    prototypes = rng.random((4, bits)) < 0.5
    flip = min(0.3, 2.0 / bits)

    def codes(count):
        return prototypes[rng.integers(0, 4, count)] ^ (rng.random((count, bits)) < flip)

    query_bits, database_bits = codes(queries), codes(database)
    if relevance == "single-label":
        return query_bits, database_bits, {"labels": (rng.integers(0, 4, queries), rng.integers(0, 4, database))}
    if relevance == "multi-label":
        query_labels = rng.random((queries, 5)) < 0.3
        database_labels = rng.random((database, 5)) < 0.3
        query_labels[0] = False  # a query that nothing is relevant to
        database_labels[rng.random(database) < 0.1] = False
        return query_bits, database_bits, {"labels": (query_labels, database_labels)}
    lists = np.stack([rng.choice(database, size=min(25, database), replace=False) for _ in range(queries)])
    lists[1::3, 5:] = -1
    lists[0] = -1  # no relevant item at all
    return query_bits, database_bits, {"relevance": lists}


def reference_labels(problem, database):
    """The problem's relevance as multi-hot labels for the brute-force reference."""
    query_bits, _, relevance = problem
    if "labels" in relevance:
        query_labels, database_labels = relevance["labels"]
        return multi_hot(query_labels, 4), multi_hot(database_labels, 4)
    lists = relevance["relevance"]
    database_labels = np.zeros((database, len(lists)), dtype=bool)
    for q, row in enumerate(lists):
        database_labels[row[row >= 0], q] = True
    return np.eye(len(lists), dtype=bool), database_labels


def both_kernels(monkeypatch, function):
    out = {}
    for kernel in ("numba", "numpy"):
        monkeypatch.setenv("HASHBENCH_KERNELS", kernel)
        out[kernel] = function()
    return out["numba"], out["numpy"]


def call(function, problem, **options):
    query_bits, database_bits, relevance = problem
    if "labels" in relevance:
        return function(query_bits, database_bits, *relevance["labels"], **options)
    return function(query_bits, database_bits, relevance=relevance["relevance"], **options)


def as_text(result) -> str:
    """Every value of a result, exactly (NaN included), and the per-query values."""
    per_query = {name: values.tolist() for name, values in result.per_query.items()}
    return json.dumps([result.to_dict(), per_query], sort_keys=True)


# --------------------------------------------------------------------------------------------
# the same values, bit for bit, and the reference's


@pytest.mark.parametrize("relevance", RELEVANCE)
@pytest.mark.parametrize("bits", BITS)
def test_compiled_and_numpy_kernels_agree_bit_for_bit_and_match_the_reference(bits, relevance, monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(bits * 10 + RELEVANCE.index(relevance))
    database = 603  # 9 blocks of 64 items and a tail of 27, 75 bytes and a tail of 3 items
    problem = tied_problem(rng, bits, 5, database, relevance)
    query_labels, database_labels = reference_labels(problem, database)
    ks = (1, 7, 64, 600, 5000)
    for topk in (None, 1, 37, 400):
        compiled_result, numpy_result = both_kernels(monkeypatch, lambda topk=topk: call(evaluate, problem, topk=topk, ks=ks))
        assert as_text(compiled_result) == as_text(numpy_result)
        expected = reference(problem[0], problem[1], query_labels, database_labels, topk=topk, ks=ks)
        assert compiled_result.map == pytest.approx(expected["map"], abs=1e-12)
        assert compiled_result.map_all == pytest.approx(expected["map_all"], abs=1e-12)
        for k in ks:
            assert compiled_result.precision_at_k[k] == pytest.approx(expected["precision_at_k"][k], abs=1e-12)
            assert compiled_result.recall_at_k[k] == pytest.approx(expected["recall_at_k"][k], abs=1e-12)
        np.testing.assert_allclose(compiled_result.pr_precision, expected["pr_precision"], atol=1e-12)
        np.testing.assert_allclose(compiled_result.pr_recall, expected["pr_recall"], atol=1e-12)
        # the mAP-only path (for one-word codes a guessed cut-off distance) gives evaluate's mAP
        map_compiled, map_numpy = both_kernels(monkeypatch, lambda topk=topk: call(mean_average_precision, problem, topk=topk))
        assert map_compiled == map_numpy == compiled_result.map


@pytest.mark.parametrize("database", [1, 2, 7, 8, 9, 63, 64, 65, 511, 512, 513])
@pytest.mark.parametrize("bits", [16, 64, 128])
def test_every_database_size_around_the_kernels_blocks(database, bits, monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(database * 1000 + bits)
    problem = tied_problem(rng, bits, 5, database, "multi-label")
    query_labels, database_labels = reference_labels(problem, database)
    for topk in (None, max(1, database // 3)):
        compiled_result, numpy_result = both_kernels(monkeypatch, lambda topk=topk: call(evaluate, problem, topk=topk, chunk_size=2))
        assert as_text(compiled_result) == as_text(numpy_result)
        expected = reference(problem[0], problem[1], query_labels, database_labels, topk=topk)
        assert compiled_result.map == pytest.approx(expected["map"], abs=1e-12)
        assert compiled_result.map_all == pytest.approx(expected["map_all"], abs=1e-12)
        map_compiled, map_numpy = both_kernels(monkeypatch, lambda topk=topk: call(mean_average_precision, problem, topk=topk))
        assert map_compiled == map_numpy == compiled_result.map


def test_compiled_map_only_counts_everything_where_the_sampled_cutoff_falls_short(monkeypatch):
    # the sample (the first 8 items of every 64) sees only items at distance 0, the other 7/8
    # are farther: the guessed cut-off distance 0 holds 128 items, fewer than k = 300, so the
    # kernel must count the whole database again
    numba = pytest.importorskip("numba")  # noqa: F841
    from hashbench.metrics import counting
    from hashbench.metrics.inputs import prepare

    rng = np.random.default_rng(3)
    bits, database = 16, 1024
    query = np.zeros((1, bits), dtype=bool)
    codes = rng.random((database, bits)) < 0.3
    codes[np.arange(database) % 64 < 8] = False
    codes[np.arange(database) % 64 >= 8, 0] = True  # at distance >= 1 from the query
    labels = rng.integers(0, 3, database)
    inputs = prepare(query, codes, np.array([0]), labels, None)
    table = np.zeros(bits + 1, dtype=np.uint64)
    limit = counting._guess_limit(inputs.query_words[0, 0], inputs.database_words, table, 300)
    assert limit == 0  # the guess falls short: 128 items within it
    compiled_map, numpy_map = both_kernels(monkeypatch, lambda: mean_average_precision(query, codes, np.array([0]), labels, topk=300))
    expected = reference(query, codes, multi_hot(np.array([0]), 3), multi_hot(labels, 3), topk=300)["map"]
    assert compiled_map == numpy_map == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------
# which kernel ranks


def test_auto_compiles_for_large_evaluations_only(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.delenv("HASHBENCH_KERNELS", raising=False)
    monkeypatch.setattr(kernel_choice, "_module", {})  # as in a fresh process: nothing loaded
    assert not kernel_choice.enabled(kernel_choice.MIN_PAIRS - 1)
    assert kernel_choice._module == {}  # numba not even imported for a small evaluation
    assert kernel_choice.enabled(kernel_choice.MIN_PAIRS)
    assert kernel_choice.enabled(10)  # once loaded, at every size
    monkeypatch.setenv("HASHBENCH_KERNELS", "numpy")
    assert not kernel_choice.enabled(kernel_choice.MIN_PAIRS)
    monkeypatch.setenv("HASHBENCH_KERNELS", "numba")
    assert kernel_choice.enabled(1)
    monkeypatch.setenv("HASHBENCH_KERNELS", "fast")
    with pytest.raises(UserError, match="HASHBENCH_KERNELS must be one of auto, numba, numpy; got 'fast'"):
        evaluate(np.zeros((1, 8)), np.ones((3, 8)), [0], [0, 1, 0])


def test_without_numba_the_numpy_kernels_rank(monkeypatch):
    rng = np.random.default_rng(5)
    problem = tied_problem(rng, 24, 6, 300, "multi-label")
    monkeypatch.setenv("HASHBENCH_KERNELS", "numpy")
    expected = as_text(call(evaluate, problem, topk=50))
    # numba cannot be imported: a fresh import of the counting kernels fails
    import hashbench.metrics

    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "hashbench.metrics.counting", raising=False)
    monkeypatch.delattr(hashbench.metrics, "counting", raising=False)
    monkeypatch.setattr(kernel_choice, "_module", {})
    monkeypatch.setattr(kernel_choice, "MIN_PAIRS", 0)
    monkeypatch.setenv("HASHBENCH_KERNELS", "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a documented fallback: no warning
        assert as_text(call(evaluate, problem, topk=50)) == expected
    assert kernel_choice._module["counting"] is None and "numba does not import" in kernel_choice._module["reason"]
    monkeypatch.setenv("HASHBENCH_KERNELS", "numba")
    with pytest.raises(UserError, match="HASHBENCH_KERNELS=numba, but the compiled kernels are unavailable: numba does not import"):
        call(evaluate, problem, topk=50)


def test_a_kernel_that_does_not_compile_falls_back_to_numpy_with_a_warning(monkeypatch):
    pytest.importorskip("numba")
    from hashbench.metrics import counting

    class Broken:
        def compile(self, signature):
            raise RuntimeError("LLVM failed")

    rng = np.random.default_rng(6)
    problem = tied_problem(rng, 40, 6, 300, "single-label")
    monkeypatch.setenv("HASHBENCH_KERNELS", "numpy")
    expected = as_text(call(evaluate, problem, topk=50))
    expected_map = call(mean_average_precision, problem, topk=50)
    monkeypatch.setattr(counting, "rank_chunk", Broken())
    monkeypatch.setattr(kernel_choice, "_compiled", {})
    monkeypatch.setattr(kernel_choice, "MIN_PAIRS", 0)
    monkeypatch.setenv("HASHBENCH_KERNELS", "auto")
    with pytest.warns(RuntimeWarning, match="compiled kernels unavailable \\(RuntimeError: LLVM failed\\); using the numpy kernels"):
        assert as_text(call(evaluate, problem, topk=50)) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert call(mean_average_precision, problem, topk=50) == expected_map
    monkeypatch.setattr(kernel_choice, "_compiled", {})
    monkeypatch.setenv("HASHBENCH_KERNELS", "numba")
    with pytest.raises(UserError, match="unavailable: RuntimeError: LLVM failed"):
        call(evaluate, problem, topk=50)


def _cache_impl(caching):
    """numba's class that picks a cache folder (named _CacheImpl in older releases)."""
    return getattr(caching, "CacheImpl", None) or caching._CacheImpl


def test_no_writable_cache_folder_compiles_in_memory(monkeypatch, tmp_path):
    numba = pytest.importorskip("numba")
    from numba.core import caching

    from hashbench.metrics import counting

    source = tmp_path / "kernel.py"
    source.write_text("def double(x):\n    return 2 * x\n")
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    monkeypatch.setattr(_cache_impl(caching), "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator available"):
        numba.njit(cache=True)(namespace["double"])  # what numba does without a cache folder
    double = counting._jit(namespace["double"])
    assert double(21) == 42


@pytest.mark.slow
def test_a_process_without_any_cache_folder_evaluates(tmp_path):
    # numba finds no cache locator (as for a read-only install with no writable home): the
    # kernels compile in memory, and the values are the numpy kernels'
    code = (
        "from numba.core import caching\n"
        "impl = getattr(caching, 'CacheImpl', None) or caching._CacheImpl\n"
        "impl._locator_classes = []  # no cache folder anywhere\n"
        "import json, numpy as np\n"
        "from hashbench.metrics import evaluate\n"
        "rng = np.random.default_rng(0)\n"
        "args = (rng.random((7, 64)) < 0.5, rng.random((500, 64)) < 0.5, rng.integers(0, 3, 7), rng.integers(0, 3, 500))\n"
        "print(json.dumps(evaluate(*args, topk=100).to_dict(), sort_keys=True))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    outputs = {}
    for kernel in ("numba", "numpy"):
        run = subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
            env={**env, "HASHBENCH_KERNELS": kernel},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        outputs[kernel] = run.stdout
    assert outputs["numba"] == outputs["numpy"]
