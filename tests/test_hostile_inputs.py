"""Hostile files and faults: crafted pickles, full disks, escaping symlinks, hollow list files."""

from __future__ import annotations

import errno
import os
import pickle

import numpy as np
import pytest
from dataset_fixtures import python2_pickle, write_cifar10

from hashbench.datasets.cifar10 import CIFAR10, load_batch_pickle, read_batch
from hashbench.errors import UserError
from hashbench.storage import atomic

# -- CIFAR-10 batches are pickles: only what the format needs may be unpickled ------------------


class _Gadget:
    """Unpickling this calls ``function(*args)``: what a crafted batch file would do."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _crafted_batch(marker, protocol: int) -> bytes:
    payload = {"data": _Gadget(os.system, f"touch {marker}"), "labels": [0]}
    return pickle.dumps(payload, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_crafted_cifar_batch_is_refused_without_running_anything(invoke, tmp_path, protocol):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(_crafted_batch(marker, protocol))
    with pytest.raises(UserError, match="refused unread") as error:
        read_batch(batch)
    assert "data_batch_1" in str(error.value) and "system" in str(error.value)
    result = invoke("data", "check", "cifar10", "--data-root", tmp_path)
    assert result.exit_code == 1, result.output
    assert "data_batch_1" in result.output and "not a CIFAR python batch" in result.output
    run = invoke("run", "--methods", "lsh", "--datasets", "cifar10", "--bits", "8",
                 "--data-root", tmp_path, "--results", tmp_path / "results")  # fmt: skip
    assert run.exit_code == 2 and "data_batch_1" in run.output
    assert not marker.exists()


@pytest.mark.parametrize(
    "gadget",
    [
        _Gadget(eval, "1 + 1"),
        _Gadget(np.load, "elsewhere.npy"),  # numpy is allowed for arrays, not for its other functions
        _Gadget(np.frombuffer, b"\0\0\0\0", np.uint8),
        _Gadget(bytes, 10**10),  # bytes(n) would allocate n bytes
    ],
)
def test_only_the_array_machinery_is_allowed(tmp_path, gadget):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": gadget}, protocol=2))
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        read_batch(path)


def test_the_release_format_loads_python2_pickles_and_numpy2_ones(tmp_path):
    rng = np.random.default_rng(0)
    planar = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    batch = {"batch_label": "training batch 1 of 5", "labels": [3, 1, 4], "data": planar,
             "filenames": ["a_000.png", "b_001.png", "c_002.png"]}  # fmt: skip
    path = tmp_path / "data_batch_1"
    # As released: Python 2's cPickle, protocol 2, numpy.core; readable as torchvision reads it.
    path.write_bytes(python2_pickle(batch))
    assert b"cnumpy.core.multiarray\n_reconstruct" in path.read_bytes()
    with open(path, "rb") as handle:
        assert pickle.load(handle, encoding="bytes")[b"filenames"][0] == b"a_000.png"
    loaded = load_batch_pickle(path)
    assert loaded["batch_label"] == "training batch 1 of 5" and loaded["filenames"][2] == "c_002.png"
    images, labels = read_batch(path)
    assert np.array_equal(images, planar.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == [3, 1, 4]
    # Written again by today's Python and numpy, at any protocol (bytes, numpy scalars too).
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps({**batch, "labels": [np.int64(3), 1, 4], "raw": b"", "more": b"\x00\xff"}, protocol=protocol))
        images, labels = read_batch(path)
        assert np.array_equal(images[1], planar[1].reshape(3, 32, 32).transpose(1, 2, 0))
        assert labels.tolist() == [3, 1, 4]
        assert load_batch_pickle(path)["more"] == b"\x00\xff"


def test_a_damaged_batch_is_one_clear_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR python batch"):
        CIFAR10().load(tmp_path)
    batch.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR python batch"):
        CIFAR10().load(tmp_path)


# -- a full or read-only disk: the error names the file, the old file stays whole ----------------


def _fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def _leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.mark.parametrize(("step", "code"), [("fsync", errno.ENOSPC), ("replace", errno.EROFS), ("mkstemp", errno.EACCES)])
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, step, code):
    target = tmp_path / "report.md"
    target.write_text("the old report\n")
    module = atomic.tempfile if step == "mkstemp" else atomic.os
    monkeypatch.setattr(module, step, _fail_with(code))
    with pytest.raises(atomic.WriteError) as error:
        atomic.write_text(target, "the new report\n")
    assert str(error.value) == f"cannot write {target}: {os.strerror(code)}"
    # Both an OSError (callers that survive a failed write still do) and a UserError (one line).
    assert isinstance(error.value, OSError) and isinstance(error.value, UserError)
    assert error.value.errno == code and error.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_text() == "the old report\n"
    assert _leftovers(tmp_path) == []


def test_a_write_cut_short_by_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "codes.npz"
    atomic.save_npz(target, codes=np.arange(4))
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def fileno(self):
            return self.handle.fileno()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fdopen", lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs)))
    with pytest.raises(OSError, match=rf"cannot write {target}: No space left on device"):
        atomic.save_npz(target, codes=np.arange(100))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_report_on_a_full_disk_is_one_line_naming_the_file(invoke, tmp_path, results, monkeypatch):
    done = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results)
    assert done.exit_code == 0, done.output
    monkeypatch.setattr(atomic.os, "fsync", _fail_with(errno.ENOSPC))
    out = tmp_path / "reports"
    result = invoke("report", "--results", results, "--out", out, "--no-plots")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"cannot write {out}" in result.output and "No space left on device" in result.output
    assert _leftovers(out) == []


def test_a_write_error_crosses_process_boundaries_whole():
    error = atomic.WriteError("results/runs/x/run.json", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    copy = pickle.loads(pickle.dumps(error))  # a worker's exception travels pickled
    assert type(copy) is atomic.WriteError and str(copy) == str(error)
    assert (copy.errno, copy.filename) == (errno.ENOSPC, "results/runs/x/run.json")


def test_a_failure_record_that_cannot_be_written_fails_that_cell_only(tmp_path, monkeypatch):
    from hashbench.run.executors import _result_or_failure
    from hashbench.run.runner import CellJob, GridSpec
    from hashbench.storage.records import CellIdentity

    identity = CellIdentity("lsh", {}, "digits", "standard", 0, 8, 0)
    job = CellJob(spec=GridSpec(methods=["lsh"], results=tmp_path / "results"), identity=identity, method_version="1",
                  protocol_version="1", manifest="", manifest_hash="", working_dir=str(tmp_path))  # fmt: skip

    def died():
        raise RuntimeError("the worker died")

    monkeypatch.setattr(atomic.os, "fsync", _fail_with(errno.ENOSPC))
    result = _result_or_failure(job, died)
    assert result.status == "failed"
    assert result.error.startswith("RuntimeError: the worker died; its failure record could not be written (cannot write ")
    assert "No space left on device" in result.error
    run_dir = tmp_path / "results" / "runs" / job.key
    assert not (run_dir / "run.json").exists() and _leftovers(run_dir) == []
