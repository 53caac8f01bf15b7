"""One resolver of a cell's state: `status` with a grid, `status` without one, `report` and
`reeval` say the same of every run folder; a running cell is seen without taking its lock
(Linux's /proc/locks on a local file system), and probed only where that table cannot show
every holder (a networked results folder)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashbench.report.results import read_records
from hashbench.run import runner
from hashbench.run.runner import GridSpec
from hashbench.run.status import directory_status, grid_status
from hashbench.storage import store as store_module
from hashbench.storage.records import Status
from hashbench.storage.store import (
    RUNNING_REASON,
    Mount,
    ResultsStore,
    RunLock,
    is_local,
    lock_table_shows,
    mount_of,
    parse_mountinfo,
    parse_mounts,
    parse_proc_locks,
)

LEAD_PLUGINS = Path(__file__).resolve().parent / "plugins.py"
GRID = dict(methods=["lsh", "exploding"], bits=[8, 16, 32])
GRID_ARGS = ("--plugin", LEAD_PLUGINS, "status", "--methods", "lsh,exploding", "--bits", "8,16,32")


def _key(results: Path, method: str, bits: int) -> str:
    (status,) = [s for s in grid_status(GridSpec(**GRID, results=results)) if (s.method, s.bits) == (method, bits)]
    return status.key


@pytest.fixture
def mixed(invoke, results) -> dict[str, Path]:
    """lsh at 8 bits ok, at 16 damaged (codes deleted), at 32 stale (its record's method
    version edited); exploding at 8 failed, at 16 interrupted (a folder with a file only), at
    32 pending."""
    assert invoke("run", "--methods", "lsh", "--bits", "8,16,32", "--results", results, "--quiet").exit_code == 0
    assert invoke("--plugin", LEAD_PLUGINS, "run", "--methods", "exploding", "--bits", "8", "--results", results, "--quiet").exit_code == 1
    folders = {name: results / "runs" / _key(results, method, bits) for name, method, bits in (
        ("ok", "lsh", 8), ("damaged", "lsh", 16), ("stale", "lsh", 32), ("failed", "exploding", 8),
        ("interrupted", "exploding", 16), ("pending", "exploding", 32),
    )}  # fmt: skip
    (folders["damaged"] / "codes.npz").unlink()
    record = folders["stale"] / "run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "method_version": "0"}))
    folders["interrupted"].mkdir()
    (folders["interrupted"] / "notes.txt").write_text("killed while training")
    assert not folders["pending"].exists()
    return folders


def test_status_with_and_without_a_grid_report_and_reeval_agree_on_every_cell(invoke, results, mixed):
    by_key = {folder.name: state for state, folder in mixed.items()}
    grid = {s.key: (s.state, s.reason) for s in grid_status(GridSpec(**GRID, results=results))}
    statuses, warnings = directory_status(results)
    directory = {s.key: (s.state, s.reason) for s in statuses}
    assert warnings == []
    # Each folder has the one state it was made to have, through both paths, for one reason.
    assert {key: state for key, (state, _) in grid.items()} == by_key
    assert {key: state for key, (state, _) in directory.items()} == {k: s for k, s in by_key.items() if s != "pending"}
    assert {key: grid[key] for key in directory} == directory
    reasons = {by_key[key]: reason for key, (_, reason) in grid.items()}
    assert reasons["ok"] is None and reasons["pending"] is None
    assert reasons["failed"] == "RuntimeError: this method always fails"
    assert reasons["damaged"].startswith("codes.npz is missing or differs from the one recorded")
    assert reasons["stale"] == "recorded under lsh version 0, protocol version 1; now 1 / 1"
    assert reasons["interrupted"] == "a run folder without a record"

    # The command shows the same, with a grid and without.
    shown = invoke(*GRID_ARGS, "--results", results)
    assert shown.exit_code == 0, shown.output
    assert "ok 1 · failed 1 · stale 1 · damaged 1 · running 0 · interrupted 1 · pending 1  (of 6)" in shown.output
    plain = invoke("--plugin", LEAD_PLUGINS, "status", "--results", results)
    assert plain.exit_code == 0, plain.output
    assert "ok 1 · failed 1 · stale 1 · damaged 1 · running 0 · interrupted 1 · pending 0  (of 5)" in plain.output
    for output in (shown.output, plain.output):
        assert reasons["failed"] in output and "recorded under lsh version 0" in output

    # report keeps the ok and failed runs, leaves the stale one out (counted) and skips the
    # damaged one with status's reason; an interrupted folder has no record to report.
    records, warnings = read_records(results)
    assert sorted(r.key for r in records) == sorted([mixed["ok"].name, mixed["failed"].name])
    damaged_warning = f"skipping {mixed['damaged'] / 'run.json'}: {reasons['damaged']}; rerun it with `hashbench run`"
    assert damaged_warning in warnings
    assert any("left out 1 stale run(s)" in w for w in warnings) and len(warnings) == 2
    kept, _ = read_records(results, include_stale=True)
    assert mixed["stale"].name in {r.key for r in kept}
    report = invoke("--plugin", LEAD_PLUGINS, "report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0, report.output
    assert reasons["damaged"] in report.output and "left out 1 stale run(s)" in report.output

    # reeval refuses the damaged run for the same reason (and re-evaluates the ok ones).
    reeval = invoke("reeval", "--results", results)
    refused = [line for line in reeval.output.splitlines() if line.startswith("refused")]
    assert refused == [f"refused: {mixed['damaged'].name} ({reasons['damaged']}; rerun the cell)"]

    # run redoes exactly the cells that are not ok, and then every path says ok (or failed).
    invoke("--plugin", LEAD_PLUGINS, "run", "--methods", "lsh", "--bits", "8,16,32", "--results", results, "--quiet")
    again = {s.key: s.state for s in grid_status(GridSpec(**GRID, results=results))}
    assert [again[mixed[name].name] for name in ("ok", "damaged", "stale")] == ["ok", "ok", "ok"]


# --------------------------------------------------------------------------------------------
# a running cell


HOLDER = (
    "import sys, time, pathlib\n"
    "from hashbench.storage.store import ResultsStore\n"
    "lock = ResultsStore(sys.argv[1]).try_lock(sys.argv[2])\n"
    "assert lock is not None\n"
    "pathlib.Path(sys.argv[3]).write_text('held')\n"
    "time.sleep(120)\n"
)
# Takes and releases run argv[2]'s lock as fast as it can for argv[3] seconds; prints how
# many tries there were and how many found it taken.
HAMMER = (
    "import sys, time\n"
    "from hashbench.storage.store import ResultsStore\n"
    "store, tries, busy = ResultsStore(sys.argv[1]), 0, 0\n"
    "lock = store.try_lock(sys.argv[2]); lock.release()\n"
    "open(sys.argv[4], 'w').write('ready')\n"
    "end = time.monotonic() + float(sys.argv[3])\n"
    "while time.monotonic() < end:\n"
    "    lock = store.try_lock(sys.argv[2]); tries += 1\n"
    "    if lock is None: busy += 1\n"
    "    else: lock.release()\n"
    "print(tries, busy)\n"
)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline and process.poll() is None, "the helper process never got going"
        time.sleep(0.02)


@pytest.fixture
def held(results, tmp_path):
    """itq's run lock at 8 bits, held by another process; lsh's cell pending."""
    spec = GridSpec(methods=["lsh", "itq"], bits=[8], results=results)
    keys = {s.method: s.key for s in grid_status(spec)}
    marker = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(results), keys["itq"], str(marker)])
    try:
        _wait_for(marker, holder)
        yield spec, keys
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.fixture
def lock_spy(monkeypatch):
    """Counts every lock this process takes (RunLock.acquire, any fcntl.flock)."""
    calls = []
    acquire, flock = RunLock.acquire, fcntl.flock

    def spied_acquire(self, *args, **kwargs):
        calls.append(("RunLock.acquire", self.folder.name))
        return acquire(self, *args, **kwargs)

    def spied_flock(descriptor, operation):
        calls.append(("flock", operation))
        return flock(descriptor, operation)

    monkeypatch.setattr(RunLock, "acquire", spied_acquire)
    monkeypatch.setattr(fcntl, "flock", spied_flock)
    return calls


def test_status_sees_a_running_cell_without_taking_its_lock(invoke, results, held, lock_spy, tmp_path):
    spec, keys = held
    if not ResultsStore(results).locks_listed:
        pytest.skip("the lock table is read only on a local file system under Linux")
    states = {s.method: (s.state, s.reason) for s in grid_status(spec)}
    assert states == {"lsh": (Status.PENDING, None), "itq": (Status.RUNNING, RUNNING_REASON)}
    statuses, _ = directory_status(results)
    assert [(s.key, s.state) for s in statuses] == [(keys["itq"], Status.RUNNING)]
    for args in (("status", "--methods", "lsh,itq", "--bits", "8"), ("status",)):
        shown = invoke(*args, "--results", results)
        assert shown.exit_code == 0 and "running 1" in shown.output and RUNNING_REASON in shown.output, shown.output
    assert lock_spy == []  # status took no lock, not even for an instant

    # Another process takes and releases lsh's lock over and over while status looks at
    # the grid over and over: it never finds the lock taken.
    ready, hammer = tmp_path / "ready", None
    hammer = subprocess.Popen(
        [sys.executable, "-c", HAMMER, str(results), keys["lsh"], "1.5", str(ready)], stdout=subprocess.PIPE, text=True
    )
    _wait_for(ready, hammer)
    looks = 0
    while hammer.poll() is None:
        assert {s.method: s.state for s in grid_status(spec)}["itq"] is Status.RUNNING
        directory_status(results)
        looks += 1
    tries, busy = map(int, hammer.communicate(timeout=30)[0].split())
    assert looks > 5 and tries > 50 and busy == 0
    assert lock_spy == []


def test_run_leaves_a_running_cell_at_once_on_a_local_file_system(invoke, results, held, monkeypatch):
    spec, keys = held
    if not ResultsStore(results).locks_listed:
        pytest.skip("the lock table is read only on a local file system under Linux")
    tries = []
    try_lock = ResultsStore.try_lock
    monkeypatch.setattr(ResultsStore, "try_lock", lambda self, key: tries.append(key) or try_lock(self, key))
    monkeypatch.setattr(runner, "BUSY_RECHECK_SECONDS", 0.01)
    run = invoke("run", "--methods", "lsh,itq", "--bits", "8", "--results", results)
    assert "running elsewhere" in run.output, run.output
    assert tries.count(keys["itq"]) == 1  # no second look: status takes no lock here
    # Where status has to probe (a networked file system), the runner looks twice.
    monkeypatch.setattr(ResultsStore, "locks_listed", property(lambda self: False))
    tries.clear()
    run = invoke("run", "--methods", "lsh,itq", "--bits", "8", "--results", results)
    assert "running elsewhere" in run.output and tries.count(keys["itq"]) == 2


def test_on_a_networked_file_system_status_probes_the_lock(results, monkeypatch, lock_spy):
    """An nfs4 mount of the results folder: /proc/locks would not show other nodes' locks, so
    the lock is probed (taken and released); a holder in this very process still conflicts,
    as flock locks of separate open files do."""
    spec = GridSpec(methods=["lsh"], bits=[8], results=results)
    (cell,) = grid_status(spec)
    folder = results / "runs" / cell.key
    folder.mkdir(parents=True)
    mountinfo = f"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n91 27 0:52 / {results.resolve()} rw - nfs4 server:/export rw\n"
    monkeypatch.setattr(store_module, "system_mounts", lambda: parse_mountinfo(mountinfo))
    assert ResultsStore(results).mount.fstype == "nfs4" and not ResultsStore(results).locks_listed
    holder = RunLock(folder)
    assert holder.acquire()
    try:
        lock_spy.clear()
        assert [s.state for s in grid_status(spec)] == [Status.RUNNING]
        assert ("RunLock.acquire", cell.key) in lock_spy  # probed
    finally:
        holder.release()
    assert [s.state for s in grid_status(spec)] == [Status.PENDING]


# --------------------------------------------------------------------------------------------
# the lock table and the mounts

PROC_LOCKS = """\
1: FLOCK  ADVISORY  WRITE 15669 fe:00:260072 0 EOF
1: -> FLOCK  ADVISORY  WRITE 15700 fe:00:260072 0 EOF
2: POSIX  ADVISORY  WRITE 812 00:1a:4242 0 EOF
3: OFDLCK ADVISORY  READ  -1 08:11:99 0 EOF
4: FLOCK  ADVISORY  WRITE 901 103:2c:2147575 0 EOF
5: FLOCK  ADVISORY  WRITE 902 <none>:0 0 EOF
6: LEASE  ACTIVE    READ  77 fe:00:5 0 EOF
garbage
"""


def test_the_proc_locks_parser_keeps_held_flocks_only():
    # Major and minor are hex, the inode decimal; blocked requests and other kinds hold no flock.
    assert parse_proc_locks(PROC_LOCKS) == {(0xFE, 0x00, 260072), (0x103, 0x2C, 2147575)}
    assert parse_proc_locks("") == set()


def test_a_lock_held_here_is_found_in_the_kernels_table(tmp_path):
    if not store_module.PROC_LOCKS.is_file():
        pytest.skip("no /proc/locks here")
    store = ResultsStore(tmp_path / "results")
    lock = store.try_lock("a-run")
    assert lock is not None
    try:
        if not store.locks_listed:
            pytest.skip("the temporary folder is not on a local file system")
        assert store.is_running("a-run")
    finally:
        lock.release()
    assert not store.is_running("a-run")
    assert not store.is_running("no-such-run")


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
91 27 0:52 / /shared/results rw,relatime shared:40 - nfs4 server:/export rw,vers=4.2
92 27 0:53 / /scratch\040space rw - lustre 10.0.0.1@tcp:/fs rw
93 27 0:54 / /home/me/remote rw master:2 - fuse.sshfs me@host:/ rw
94 27 8:17 / /data rw - xfs /dev/sdb1 rw
95 94 0:55 / /data/smb rw - cifs //server/share rw
96 27 0:56 / /odd rw - weirdfs none rw
"""


def test_the_mount_of_a_path_and_which_mounts_show_their_locks(monkeypatch):
    mounts = parse_mountinfo(MOUNTINFO)
    assert Mount("/shared/results", "nfs4", (0, 52)) in mounts and Mount("/scratch space", "lustre", (0, 53)) in mounts

    def fstype(path: str) -> str:
        return mount_of(Path(path), mounts).fstype

    assert fstype("/shared/results/runs/x") == fstype("/shared/results") == "nfs4"
    assert fstype("/shared/resultsX") == fstype("/") == "ext4"  # a prefix of the name is not a parent
    assert fstype("/scratch space/r") == "lustre" and fstype("/home/me/remote/r") == "fuse.sshfs"
    assert fstype("/data/r") == "xfs" and fstype("/data/smb/r") == "cifs"
    assert [is_local(name) for name in ("ext4", "xfs", "btrfs", "tmpfs")] == [True] * 4
    networked = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "fuse.glusterfs", "weirdfs", "overlay")
    assert not any(is_local(name) for name in networked)
    # The networked fallback is chosen for an nfs mount, whatever /proc/locks says.
    monkeypatch.setattr(store_module, "PROC_LOCKS", Path(__file__))  # a readable file
    assert not lock_table_shows(mount_of(Path("/shared/results/runs"), mounts))
    assert lock_table_shows(mount_of(Path("/data/runs"), mounts))
    assert not lock_table_shows(None)
    monkeypatch.setattr(store_module, "PROC_LOCKS", Path("/no/such/proc/locks"))
    assert not lock_table_shows(mount_of(Path("/data/runs"), mounts))  # not Linux: probe
    # The same from /proc/mounts, when mountinfo cannot be read.
    simple = parse_mounts("/dev/vda / ext4 rw 0 0\nserver:/export /shared/results nfs rw,vers=3 0 0\n")
    assert mount_of(Path("/shared/results/runs"), simple).fstype == "nfs"
