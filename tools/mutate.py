#!/usr/bin/env python3
"""Mutation testing of hashbench's core: does the test suite notice small, realistic bugs?

Each mutation names a snippet of source text, what replaces it, and the tests that should
notice. The script copies the repository (tracked and untracked, not ignored, files: no
virtual environment, no results) to a temporary folder, checks that Python imports
hashbench from that copy, runs the named tests once unmutated (they must pass), then for
each mutation writes the mutant into the copy, runs its tests with a time limit and puts
the original back. The working tree is never modified.

A mutant is *killed* when its tests fail (or time out), *survives* when they pass. Mutants
that cannot be told apart from the original by any test (*equivalent*) carry the reason and
are left out of the score. A snippet found nowhere (or more than once) is reported as *not
applied*: the list needs updating after a refactor.

    python tools/mutate.py                  # everything; exit status 1 below --min-score
    python tools/mutate.py --list           # the mutations and their tests
    python tools/mutate.py --only cibhash-gradient-ascent,splits-leak-check-disabled

Snippets are found by searching the source text, not by line numbers, in the files matched
by each mutation's glob patterns (``hashbench/metrics/*.py`` and ``hashbench/metrics.py``
alike), so moving code between files of those patterns does not break the list.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

METRICS = ("hashbench/metrics.py", "hashbench/metrics/*.py")
METHODS = ("methods/*.py",)  # code moves between the method modules; snippets are unique in all of them
LEARN = "tests/test_learning.py::test_a_short_run_beats_the_untrained_model_and_lsh_and_its_loss_falls"
ISOLATION = "tests/test_split_isolation.py"
VALIDATION = f"{ISOLATION}::test_validation_scores_val_codes_against_train_codes"


def learns(method: str) -> str:
    return f"{LEARN}[{method}-cpu]"


def parameter(method: str, field: str) -> str:
    return f"tests/test_params_effect.py::test_changing_a_parameter_changes_the_result[{method}-{field}]"


@dataclass(frozen=True)
class Mutation:
    id: str
    files: tuple[str, ...]  # glob patterns, relative to the repository root
    original: str  # exact source text, found exactly once in those files
    replacement: str
    tests: tuple[str, ...]  # pytest arguments (files, node ids, -k expressions)
    what: str  # the bug, in words
    equivalent: str | None = None  # why no test can tell it apart, when none can


MUTATIONS: tuple[Mutation, ...] = (
    # ---- CIBHash: loss and training step ---------------------------------------------------
    Mutation(
        "cibhash-gradient-ascent", METHODS,
        'terms["loss"].backward()', '(-terms["loss"]).backward()',
        (learns("cibhash"),),
        "CIBHash climbs its loss instead of descending it",
    ),
    Mutation(
        "cibhash-validates-train-against-train", METHODS,
        "validation_map(self.codes(val), self.codes(train), val, train, self.bits",
        "validation_map(self.codes(train), self.codes(train), train, train, self.bits",
        (f"{VALIDATION}[cibhash]",),
        "model selection scores the training split against itself",
    ),
    Mutation(
        "cibhash-kl-term-dropped", METHODS,
        '"loss": contrastive + beta * kl,', '"loss": contrastive,',
        (parameter("cibhash", "beta"),),
        "the information-bottleneck term is computed but left out of the loss",
    ),
    Mutation(
        "cibhash-own-view-is-positive", METHODS,
        "torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])",
        "torch.cat([torch.arange(batch), torch.arange(batch, 2 * batch)])",
        ("tests/test_cibhash.py::test_nt_xent_equals_the_direct_formula",),
        "NT-Xent takes each anchor itself as its positive",
    ),
    Mutation(
        "cibhash-anchor-not-masked", METHODS,
        'similarity = similarity.masked_fill(eye, float("-inf"))', "similarity = similarity",
        ("tests/test_cibhash.py::test_nt_xent_equals_the_direct_formula",),
        "NT-Xent counts an anchor as its own negative",
    ),
    Mutation(
        "cibhash-kl-without-stop-gradient", METHODS,
        "    q = q.detach()\n", "",
        ("tests/test_cibhash.py::test_kl_gradient_reaches_only_the_non_detached_side",),
        "the KL target is not detached",
    ),
    Mutation(
        "cibhash-stochastic-is-deterministic", METHODS,
        "probabilities - torch.rand_like(probabilities)", "probabilities - 0.5",
        ("tests/test_cibhash.py::test_stochastic_layer_samples_bernoulli_codes_with_identity_gradient",
         parameter("cibhash", "variant")),
        "the stochastic binary layer thresholds at 0.5",
    ),
    Mutation(
        "cibhash-one-view-twice", METHODS,
        "view_i, view_j = augment(pixels, policy), augment(pixels, policy)",
        "view_i = view_j = augment(pixels, policy)",
        (learns("cibhash"),),
        "both views of an image are the same augmentation",
    ),
    Mutation(
        "cibhash-gradients-accumulate", METHODS,
        "            optimizer.zero_grad(set_to_none=True)\n            terms[", "            terms[",
        (learns("cibhash"),),
        "gradients are never cleared between steps",
    ),
    Mutation(
        "training-selects-the-worst-epoch", ("hashbench/toolkit/training.py",),
        'ranked > best["score"]', 'ranked < best["score"]',
        ("tests/test_training.py::test_best_validation_epoch_is_selected_and_restored",),
        "model selection keeps the lowest validation score",
    ),
    Mutation(
        "training-best-weights-not-restored", ("hashbench/toolkit/training.py",),
        '_load_trainable_state(self.model, best["state"])', "pass",
        (f"{ISOLATION}::test_the_epoch_validated_best_is_the_model_kept",),
        "the selected epoch is recorded but its weights are not restored",
    ),
    Mutation(
        "similarity-gradient-ascent", METHODS,
        "            loss.backward()\n", "            (-loss).backward()\n",
        (learns("greedyhash"), learns("bihalf")),
        "GreedyHash and Bi-half climb their similarity loss",
    ),
    Mutation(
        "tbh-gradient-ascent", METHODS,
        'simultaneous_step({"actor": terms["actor"],', 'simultaneous_step({"actor": -terms["actor"],',
        (learns("tbh"),),
        "TBH's encoder and decoder climb their loss",
    ),
    Mutation(
        "bgan-gradient-ascent", METHODS,
        "simultaneous_step({name: terms[name] for name in groups}",
        'simultaneous_step({name: -terms[name] if name == "encoder" else terms[name] for name in groups}',
        (learns("bgan"),),
        "BGAN's encoder climbs its loss",
    ),
    Mutation(
        "bgan-codes-from-a-sampled-latent", METHODS,
        "mean, _ = self.model[\"encoder\"](self.preprocess(batch, self.device))\n        return mean >= 0",
        "mean, log_var = self.model[\"encoder\"](self.preprocess(batch, self.device))\n"
        "        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) >= 0",
        ("tests/test_bgan_codes.py",),
        "BGAN encodes with the sampled latent z = μ + σε instead of μ",
    ),
    # ---- runner: the cell logic ------------------------------------------------------------
    Mutation(
        "runner-query-as-validation", ("hashbench/run/runner.py",),
        'method.fit(train, data.split("val"))', 'method.fit(train, data.split("query"))',
        (f"{ISOLATION}::test_the_runner_fits_on_train_validates_on_val_and_never_shows_queries",),
        "the runner hands the query split to fit as the validation split",
    ),
    Mutation(
        "runner-every-seed-is-zero", ("hashbench/run/runner.py",),
        "context = RunContext(seed=cell.seed,", "context = RunContext(seed=0,",
        ("tests/test_params_effect.py::test_the_run_seed_changes_the_codes",),
        "every run seed trains like seed 0",
    ),
    Mutation(
        "runner-split-seed-ignored", ("hashbench/run/runner.py",),
        "manifest = draw_split(name, protocol, arrays, spec.split_seed)",
        "manifest = draw_split(name, protocol, arrays, 0)",
        (f"{ISOLATION}::test_the_split_seed_draws_another_split",),
        "every split seed draws the split of seed 0",
    ),
    Mutation(
        "runner-worker-trusts-a-changed-manifest", ("hashbench/run/runner.py",),
        "if manifest is not None and manifest.hash != job.manifest_hash:", "if False:",
        (f"{ISOLATION}::test_a_worker_refuses_a_manifest_changed_after_planning",),
        "a worker runs on a manifest edited after the grid was planned",
    ),
    # ---- splits ----------------------------------------------------------------------------
    Mutation(
        "splits-leak-check-disabled", ("hashbench/data/splits.py",),
        "if np.intersect1d(query, train).size:", "if False:",
        (f"{ISOLATION}::test_a_leaking_draw_is_refused", f"{ISOLATION}::test_the_runner_refuses_a_leaking_protocol_before_writing_anything"),
        "training items in the query set are not refused",
    ),
    Mutation(
        "splits-val-train-overlap-allowed", ("hashbench/data/splits.py",),
        'if np.intersect1d(splits["val"], query).size or np.intersect1d(splits["val"], train).size:',
        'if np.intersect1d(splits["val"], query).size:',
        (f"{ISOLATION}::test_a_leaking_draw_is_refused",),
        "validation items may also be training items",
    ),
    Mutation(
        "splits-hash-ignores-val", ("hashbench/data/splits.py",),
        "for name in SPLIT_NAMES if name in splits}", "for name in SPLIT_NAMES[:3] if name in splits}",
        (f"{ISOLATION}::test_an_edited_manifest_list_is_refused_on_load",),
        "the manifest's content hash does not cover the validation list",
    ),
    Mutation(
        "splits-load-skips-hash-check", ("hashbench/data/splits.py",),
        "if not matches:", "if False:",
        (f"{ISOLATION}::test_an_edited_manifest_list_is_refused_on_load",),
        "a manifest is trusted without checking its content hash",
    ),
    Mutation(
        "splits-val-drawn-from-whole-database", ("hashbench/data/splits.py",),
        "rest = np.setdiff1d(database, train)", "rest = database",
        ("tests/test_splits.py::test_digits_standard_protocol_sizes_and_invariants",),
        "validation items are drawn without excluding the training items",
    ),
    Mutation(
        "splits-multilabel-item-drawn-twice", ("hashbench/data/splits.py",),
        "        available[picked] = False\n", "",
        ("tests/test_splits.py::test_multilabel_per_class_sampling_draws_each_concept_from_undrawn_items",),
        "a multi-label item can be drawn once per class it carries",
    ),
    # ---- store -----------------------------------------------------------------------------
    Mutation(
        "store-damaged-codes-trusted", ("hashbench/storage/store.py",),
        "return file_sha256(path) == record.codes_sha256", "return True",
        ("tests/test_records.py::test_missing_or_truncated_codes_make_a_run_damaged_and_run_redoes_it",),
        "codes changed after the run still count as whole",
    ),
    Mutation(
        "store-failed-run-counts-as-done", ("hashbench/storage/store.py",),
        "if record.status is Status.FAILED:", "if False:",
        ("tests/test_status.py::test_status_reflects_a_planted_failure",),
        "a failed run is taken for one whose codes were damaged (status shows the wrong state and reason)",
    ),
    Mutation(
        "store-run-key-ignores-params", ("hashbench/storage/records.py", "hashbench/storage/store.py"),
        '            "params": dict(self.params),\n', "",
        ("tests/test_store_runner.py::test_run_key_is_stable_and_distinguishes_every_field_and_version",),
        "two hyperparameter settings of a cell share one run folder",
    ),
    Mutation(
        "store-run-key-digest-ignores-seed", ("hashbench/storage/records.py", "hashbench/storage/store.py"),
        '            "seed": self.seed,\n', "",
        ("tests/test_store_runner.py::test_run_key_is_stable_and_distinguishes_every_field_and_version",),
        "the run key's digest leaves out the seed",
        equivalent=(
            "the run key's readable prefix (…-seed{seed}-) carries the seed, so keys and run folders stay "
            "distinct and records are looked up by that prefix; only the cell id digest loses it"
        ),
    ),
    # ---- codes -----------------------------------------------------------------------------
    Mutation(
        "codes-minus-one-read-as-one", ("hashbench/codes.py",),
        "ones = array == 1", "ones = array != 0",
        ("tests/test_codes_contract.py",),
        "{-1, +1} codes are read with -1 as a one bit",
    ),
    Mutation(
        "codes-zero-sign-accepted", ("hashbench/codes.py",),
        "if np.isin(values, (-1, 0, 1)).all():", "if False:",
        ("tests/test_codes_contract.py",),
        "codes holding sign(0) = 0 are refused without saying that a zero from sign() is the cause",
    ),
    Mutation(
        "codes-little-endian-packing", ("hashbench/codes.py",),
        "return np.packbits(to_bits(codes, bits, name=name), axis=1)",
        'return np.packbits(to_bits(codes, bits, name=name), axis=1, bitorder="little")',
        ("tests/test_codes_contract.py",),
        "codes are packed in the other bit order than they are unpacked",
    ),
    # ---- metrics ---------------------------------------------------------------------------
    Mutation(
        "metrics-ap-divides-by-k", METRICS,
        "ap[row] = precision[:found].sum() / found", "ap[row] = precision[:found].sum() / map_k",
        ("tests/test_metrics.py::test_matches_reference",),
        "AP@k divides by k instead of the relevant items in the top k",
    ),
    Mutation(
        "metrics-r-at-k-off-by-one", METRICS,
        "r_at_k[row] = np.searchsorted(positions, ks_array)",
        'r_at_k[row] = np.searchsorted(positions, ks_array, side="right")',
        ("tests/test_metrics.py::test_matches_reference",),
        "P@k and R@k count the item at rank k + 1",
    ),
    Mutation(
        "metrics-monitoring-ap-divides-by-k", METRICS,
        "out[row] = precision.sum() / positions.size", "out[row] = precision.sum() / depth",
        ("tests/test_metrics.py::test_mean_average_precision_equals_evaluate_map",),
        "the per-epoch mAP@k divides by k",
    ),
    Mutation(
        "metrics-queries-without-relevant-items-dropped", METRICS,
        "map=float(ap.mean()),", "map=float(ap[ap > 0].mean()),",
        ("tests/test_metrics.py::test_queries_without_relevant_items_count_as_zero",),
        "queries without relevant items are left out of the mean instead of counting 0",
    ),
    Mutation(
        "metrics-long-codes-count-last-word-only", METRICS,
        "np.add(target, counts, out=target)", "np.copyto(target, counts)",
        ("tests/test_metrics.py::test_long_codes_match_reference",),
        "codes over 64 bits: only the last word's differing bits count",
    ),
    Mutation(
        "metrics-multilabel-relevance-and", METRICS,
        "out |= self.bitmaps[classes[:, slot]]", "out &= self.bitmaps[classes[:, slot]]",
        ("tests/test_metrics.py::test_matches_reference", "tests/test_metrics.py::test_single_label_and_multi_hot_forms_agree"),
        "multi-label relevance needs every label shared instead of one",
    ),
    Mutation(
        "metrics-padding-bits-counted", METRICS,
        "packed[:, -1] &= np.uint8", "packed[:, -1] |= np.uint8",
        ("tests/test_metrics.py::test_packed_padding_bits_are_ignored",),
        "padding bits of packed codes count in distances",
    ),
    # ---- linear methods --------------------------------------------------------------------
    Mutation(
        "itq-procrustes-transposed", METHODS,
        "rotation = right_t.T @ left.T", "rotation = left @ right_t",
        ("tests/test_baselines.py::test_itq_matches_the_authors_algorithm_and_lowers_quantisation_loss",),
        "ITQ's Procrustes step takes the transposed rotation",
    ),
    Mutation(
        "pca-uncentred-covariance", METHODS,
        "covariance = centred.T @ centred", "covariance = data.T @ data",
        ("tests/test_baselines.py::test_itq_matches_the_authors_algorithm_and_lowers_quantisation_loss",
         "tests/test_baselines.py::test_spectral_hashing_bits_match_the_closed_form"),
        "PCA (PCAH, ITQ, SH) on the uncentred second moment",
    ),
    Mutation(
        "pca-smallest-components", METHODS,
        'order = np.argsort(eigenvalues, kind="stable")[::-1][:count]',
        'order = np.argsort(eigenvalues, kind="stable")[:count]',
        ("tests/test_baselines.py::test_itq_matches_the_authors_algorithm_and_lowers_quantisation_loss",
         "tests/test_baselines.py::test_spectral_hashing_bits_match_the_closed_form"),
        "PCA keeps the directions of least variance",
    ),
    Mutation(
        "pcah-encode-uncentred", METHODS,
        "return (split.features - self.mean) @ self.components >= 0",
        "return split.features @ self.components >= 0",
        ("tests/test_baselines.py::test_pcah_matches_svd_pca",),
        "PCAH encodes without subtracting the training mean",
    ),
    Mutation(
        "lsh-centre-ignored", METHODS,
        "if self.params.centre else", "if True else",
        (parameter("lsh", "centre"),),
        "LSH centres whatever its centre parameter says",
    ),
    Mutation(
        "itq-iterations-ignored", METHODS,
        "for _ in range(iterations):", "for _ in range(50):",
        (parameter("itq", "iterations"),),
        "ITQ runs 50 iterations whatever its parameter says",
    ),
    Mutation(
        "sh-box-from-mean", METHODS,
        "self.minimum = projected.min(axis=0) - _EPS", "self.minimum = projected.mean(axis=0) - _EPS",
        ("tests/test_baselines.py::test_spectral_hashing_bits_match_the_closed_form",),
        "spectral hashing's box starts at the mean instead of the minimum",
    ),
    Mutation(
        "sh-keeps-constant-mode", METHODS,
        "return modes[order[1 : bits + 1]]", "return modes[order[:bits]]",
        ("tests/test_baselines.py::test_spectral_modes_pick_lowest_frequencies",),
        "spectral hashing keeps the constant eigenfunction as a bit",
    ),
    # ---- atomic writes ---------------------------------------------------------------------
    Mutation(
        "atomic-writes-in-place", ("hashbench/storage/atomic.py",),
        'descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)',
        "descriptor, temporary = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), str(path)",
        ("tests/test_atomic_kill.py",),
        "files are overwritten in place instead of through a temporary file and a rename",
    ),
    # ---- caches ----------------------------------------------------------------------------
    Mutation(
        "cache-no-recheck-under-lock", ("hashbench/data/cache.py",),
        "array = self.open()  # another process may have built it while we waited\n                if array is not None:\n                    return array\n",
        "",
        ("tests/test_images_cache.py::test_two_builders_at_once_build_once",),
        "a builder that waited for another's lock builds the entry again",
    ),
    Mutation(
        "features-vgg16-in-train-mode", ("hashbench/toolkit/backbone_features.py",),
        "network = network.to(self.device).eval()", "network = network.to(self.device).train()",
        ("tests/test_vgg_features.py",),
        "cached VGG-16 features are computed with dropout active",
    ),
    # ---- report ----------------------------------------------------------------------------
    Mutation(
        "report-bold-on-the-worst", ("hashbench/report/tables.py", "hashbench/metric_table.py"),
        "self.mean.max(axis=0) if self.info.higher_is_better else self.mean.min(axis=0)",
        "self.mean.min(axis=0) if self.info.higher_is_better else self.mean.max(axis=0)",
        ("tests/test_report_bold.py",),
        "the report puts the worst cell of each column in bold",
    ),
)


# --------------------------------------------------------------------------------------------


def repository_files(root: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def make_copy(root: Path, target: Path) -> None:
    """Copy the repository's files and mirror the install layout of pyproject's package-dir."""
    for name in repository_files(root):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, destination)
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dirs = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    for package, folder in package_dirs.items():
        parts = package.split(".")
        link = target.joinpath(*parts)
        if len(parts) > 1 and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(target / folder, link.parent), target_is_directory=True)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    # A mutant may have the original's size and modification second: never reuse bytecode.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in ("HASHBENCH_RESULTS", "HASHBENCH_DATA"):
        env.pop(name, None)
    return env


def check_imports(copy: Path, python: str) -> None:
    probe = (
        "import hashbench, hashbench.methods.lsh, hashbench.datasets.digits, hashbench.run.runner;"
        "print(hashbench.__file__); print(hashbench.methods.lsh.__file__); print(hashbench.datasets.digits.__file__)"
    )
    result = subprocess.run([python, "-c", probe], cwd=copy, env=environment(copy), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the copy does not import:\n{result.stderr}")
    for path in result.stdout.split():
        if not Path(path).resolve().is_relative_to(copy.resolve()):
            sys.exit(f"Python imports {path}, not the copy in {copy}; mutants would not be tested")


def locate(copy: Path, mutation: Mutation) -> tuple[Path | None, str]:
    """The one file holding the snippet, or None and why not."""
    hits = []
    for pattern in mutation.files:
        for name in sorted(glob.glob(str(copy / pattern))):
            path = Path(name)
            count = path.read_text().count(mutation.original)
            if count:
                hits.append((path, count))
    total = sum(count for _, count in hits)
    if total == 0:
        return None, f"snippet not found in {', '.join(mutation.files)}"
    if total > 1:
        where = ", ".join(f"{path.relative_to(copy)} ({count}x)" for path, count in hits)
        return None, f"snippet found {total} times ({where}); make it unique"
    return hits[0][0], ""


@dataclass
class Outcome:
    mutation: Mutation
    state: str  # killed | survived | not applied | broken (its tests could not run)
    seconds: float = 0.0
    detail: str = ""


def run_tests(copy: Path, python: str, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, detail)."""
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *split_k(tests)]
    start = time.monotonic()
    process = subprocess.Popen(
        command, cwd=copy, env=environment(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", time.monotonic() - start, f"over {timeout:.0f} s"
    seconds = time.monotonic() - start
    failed = [line.split(" - ")[0] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if process.returncode == 0:
        return "passed", seconds, last
    if process.returncode == 1:
        return "failed", seconds, failed[0] if failed else last
    return "error", seconds, f"pytest exit status {process.returncode}: {last}"


def split_k(tests: tuple[str, ...]) -> list[str]:
    """Several ``-k`` expressions in one list become one: (a) or (b) (pytest keeps only the last)."""
    paths, expressions, items = [], [], list(tests)
    while items:
        item = items.pop(0)
        if item == "-k":
            expressions.append(f"({items.pop(0)})")
        else:
            paths.append(item)
    return [*dict.fromkeys(paths), *(["-k", " or ".join(expressions)] if expressions else [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", default="", help="comma-separated mutation ids")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's tests (default 600)")
    parser.add_argument("--min-score", type=float, default=85.0, help="exit status 1 below this percentage")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests unmutated first")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with hashbench's dependencies")
    options = parser.parse_args(argv)

    chosen = list(MUTATIONS)
    if options.only:
        wanted = [name.strip() for name in options.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {m.id for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation ids: {', '.join(unknown)}")
        chosen = [m for m in MUTATIONS if m.id in wanted]
    if options.list:
        for mutation in chosen:
            flag = "  (equivalent)" if mutation.equivalent else ""
            print(f"{mutation.id}{flag}\n    {mutation.what}\n    tests: {' '.join(mutation.tests)}")
        return 0

    copy_root = Path(tempfile.mkdtemp(prefix="hashbench-mutants-"))
    copy = copy_root / "repository"
    try:
        make_copy(REPOSITORY, copy)
        check_imports(copy, options.python)
        print(f"copy: {copy} (hashbench imported from it)", flush=True)
        if not options.skip_baseline:
            everything = tuple(part for mutation in chosen for part in mutation.tests)
            state, seconds, detail = run_tests(copy, options.python, everything, options.timeout * 2)
            print(f"unmutated: {state} in {seconds:.0f} s ({detail})", flush=True)
            if state != "passed":
                print("the tests fail without any mutation; fix them first", file=sys.stderr)
                return 2
        outcomes = []
        for number, mutation in enumerate(chosen, start=1):
            path, problem = locate(copy, mutation)
            if path is None:
                outcome = Outcome(mutation, "not applied", detail=problem)
            else:
                original = path.read_text()
                path.write_text(original.replace(mutation.original, mutation.replacement))
                try:
                    state, seconds, detail = run_tests(copy, options.python, mutation.tests, options.timeout)
                finally:
                    path.write_text(original)
                if state == "error":
                    outcome = Outcome(mutation, "broken", seconds, f"tests could not run ({detail})")
                else:
                    killed = state in ("failed", "timeout")
                    outcome = Outcome(mutation, "killed" if killed else "survived", seconds, detail)
            outcomes.append(outcome)
            print(f"[{number:2d}/{len(chosen)}] {outcome.state.upper():11s} {mutation.id:45s} "
                  f"{outcome.seconds:6.1f} s  {outcome.detail}", flush=True)  # fmt: skip
        return report(outcomes, options.min_score)
    finally:
        if options.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy_root, ignore_errors=True)


def report(outcomes: list[Outcome], min_score: float) -> int:
    counted = [o for o in outcomes if o.state in ("killed", "survived") and not o.mutation.equivalent]
    killed = [o for o in counted if o.state == "killed"]
    survivors = [o for o in counted if o.state == "survived"]
    equivalent = [o for o in outcomes if o.mutation.equivalent and o.state in ("killed", "survived")]
    missing = [o for o in outcomes if o.state in ("not applied", "broken")]
    score = 100.0 * len(killed) / len(counted) if counted else 0.0
    print(f"\nmutation score: {len(killed)}/{len(counted)} killed ({score:.1f} %)")
    for title, items in (("survived", survivors), ("not applied or tests not runnable (update the list)", missing)):
        if items:
            print(f"{title}:")
            for o in items:
                print(f"  {o.mutation.id}: {o.mutation.what}" + (f" [{o.detail}]" if o in missing else ""))
    if equivalent:
        print("equivalent (not counted):")
        for o in equivalent:
            print(f"  {o.mutation.id} ({o.state}): {o.mutation.equivalent}")
    return 0 if score >= min_score and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
