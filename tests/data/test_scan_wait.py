"""The other ranks of a machine wait for the first one's scan, never forever and never silently
(mmlora/data/scan_wait.py). A rank is simulated in this process: LOCAL_RANK=1 with
LOCAL_WORLD_SIZE=2 waits, and its sleeps between polls run the first process's part (LOCAL_RANK=0)."""

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from mmlora.config.schema import DataConfig
from mmlora.data import arrowscan, scan_wait
from mmlora.data.scan import scan_serially, scan_split
from mmlora.data.scanstore import ArrowSamples, cache_root
from mmlora.errors import MmloraError

Q = "What color is the shape?"
REAL_SLEEP = time.sleep


@pytest.fixture
def data_file(folder):
    rows = [{"image": "a.png", "question": Q, "answer": "red"}, {"image": "gone.png", "question": Q, "answer": "x"}]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def quick(monkeypatch):
    """Waits of a fraction of a second; more than 400 polls count as hanging (the test fails)."""
    for name, seconds in (("STALE_S", 0.6), ("PROGRESS_S", 0.2), ("POLL_S", 0.02)):
        monkeypatch.setattr(scan_wait, name, seconds)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")


def first_process_during_the_wait(monkeypatch, first_process) -> list:
    """Runs `first_process()` as local rank 0 at the waiting rank's first sleep; later sleeps are
    real. What it returned or raised is appended to the returned list."""
    outcome, polls = [], []

    def sleep(seconds):
        polls.append(seconds)
        assert len(polls) < 400, "the waiting rank hangs"
        if len(polls) == 1:
            monkeypatch.setenv("LOCAL_RANK", "0")
            try:
                outcome.append(first_process())
            except MmloraError as error:
                outcome.append(error)
            monkeypatch.setenv("LOCAL_RANK", "1")
        else:
            REAL_SLEEP(seconds)

    monkeypatch.setattr(time, "sleep", sleep)  # the module's own: arrowscan on main polls with it too
    return outcome


def messages(caplog) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name.startswith("mmlora.data.scan_wait")]


def test_a_first_process_that_stops_on_bad_data_stops_the_others_with_the_same_error(
        processor, data_file, quick, monkeypatch, caplog):
    cfg = DataConfig(train="x", column_map=["q=question"])  # no row has q: found after the last row is read
    monkeypatch.setattr(scan_wait, "STALE_S", 2.0)  # longer than the first process's part: progress lines first
    outcome = first_process_during_the_wait(
        monkeypatch, lambda: scan_split(str(data_file), cfg, processor, progress=False))
    with caplog.at_level(logging.INFO), pytest.raises(MmloraError) as waiting:
        scan_split(str(data_file), cfg, processor, progress=False)
    assert isinstance(outcome[0], MmloraError) and "no row has" in str(outcome[0])
    assert str(waiting.value) == str(outcome[0])  # its own scan met the same data
    said = messages(caplog)
    assert said[0].startswith("INFO train data: waiting for the first process's scan (")
    assert any(m.startswith("WARNING train data: still waiting for the first process's scan") for m in said)
    final = said[0].split("(", 1)[1][:-1]
    assert said[-1] == (f"WARNING train data: the first process stopped scanning without a result (no work folder "
                        f"{final}.* changed for 2 s); this process scans the data itself, without the cache (an "
                        "error of the first process is in its own log)")
    assert [p.name for p in cache_root().iterdir() if p.name.startswith(Path(final).name)] == []


def test_a_first_process_that_cannot_write_its_marker_on_a_full_disk_does_not_hang_the_others(
        processor, data_file, quick, monkeypatch, caplog):
    cfg = DataConfig(train="x", on_error="skip", max_length=303)
    write_text = Path.write_text

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def first_process():
        with monkeypatch.context() as full:
            full.setattr(arrowscan, "write_rows", disk_full)
            full.setattr(Path, "write_text", lambda self, *a, **k: disk_full() if self.suffix == ".serial" else
                         write_text(self, *a, **k))
            return scan_split(str(data_file), cfg, processor, progress=False)

    outcome = first_process_during_the_wait(monkeypatch, first_process)
    with caplog.at_level(logging.INFO):
        waited = scan_split(str(data_file), cfg, processor, progress=False)
    assert isinstance(outcome[0].samples, list)  # the first process scanned in one process, without a marker
    assert isinstance(waited.samples, ArrowSamples)  # this one on Arrow, in a temporary folder
    expected = scan_serially(str(data_file), cfg, processor, progress=False)
    for scan in (outcome[0], waited):
        assert ([(p.reason, p.where) for p in scan.problems], list(scan.samples), scan.lengths) == (
            [(p.reason, p.where) for p in expected.problems], expected.samples, expected.lengths)
    assert messages(caplog)[-1].startswith("WARNING train data: the first process stopped scanning without a result")


def test_a_serial_marker_left_by_an_earlier_launch_is_not_this_ones(processor, data_file, quick, monkeypatch):
    cfg = DataConfig(train="x", on_error="skip", max_length=304)
    calls, scan_into = [], arrowscan._scan_into
    monkeypatch.setattr(arrowscan, "_scan_into", lambda *a, **k: calls.append(1) or scan_into(*a, **k))
    before = set(cache_root().iterdir())
    monkeypatch.setenv("LOCAL_RANK", "0")
    scan_split(str(data_file), cfg, processor, progress=False)
    (final,) = set(cache_root().iterdir()) - before
    monkeypatch.setenv("LOCAL_RANK", "1")
    for _ in range(2):  # left by an earlier launch: empty (as mmlora wrote it before), or another launch's
        shutil.rmtree(final)  # both ranks scan anew
        final.with_suffix(".serial").write_text("" if not calls[1:] else "launch 0")
        outcome = first_process_during_the_wait(
            monkeypatch, lambda: scan_split(str(data_file), cfg, processor, progress=False))
        waited = scan_split(str(data_file), cfg, processor, progress=False)
        assert isinstance(waited.samples, ArrowSamples) and list(waited.samples) == list(outcome[0].samples)
    assert len(calls) == 3  # the first process's scans only


def test_a_work_folder_seen_being_written_then_gone_without_a_result_stops_the_wait(tmp_path, quick, monkeypatch,
                                                                                    caplog):
    monkeypatch.setattr(scan_wait, "STALE_S", 600.0)  # only the folder's going can end this wait
    final = tmp_path / ("0" * 32)
    work = tmp_path / f"{final.name}.abcd1234"
    work.mkdir()
    polls = []
    monkeypatch.setattr(time, "sleep", lambda s: polls.append(s) or (len(polls) == 3 and work.rmdir()))
    with caplog.at_level(logging.WARNING):
        assert scan_wait.wait_for_first_process(final, "eval", lambda: None) == (False, None)
    assert len(polls) == 3
    assert messages(caplog) == [f"WARNING eval data: the first process stopped scanning without a result (its work "
                                f"folder {work} is gone); this process scans the data itself, without the cache (an "
                                "error of the first process is in its own log)"]


def test_a_slow_scan_kept_alive_by_its_heartbeat_is_waited_for(tmp_path, quick, monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_RANK", "2")  # its progress lines are info: rank 1 shows the machine's
    final = tmp_path / ("1" * 32)
    work = tmp_path / f"{final.name}.abcd1234"
    work.mkdir()
    os.utime(work, (time.time() - 3600,) * 2)  # unchanged for an hour: only the heartbeat says it is alive
    done_at = time.monotonic() + 3 * scan_wait.STALE_S
    beat = scan_wait.Heartbeat(work, every=0.05).start()
    try:
        with caplog.at_level(logging.INFO):
            assert scan_wait.wait_for_first_process(
                final, "train", lambda: "result" if time.monotonic() > done_at else None) == (True, "result")
    finally:
        beat.stop()
    said = messages(caplog)
    assert said[0] == f"INFO train data: waiting for the first process's scan ({final})" and said[1:]
    assert all(m.startswith(f"INFO train data: still waiting for the first process's scan ({final}) after ") and
               m.endswith(" s (its work folder is being written)") for m in said[1:])  # no warning
    assert time.time() - work.stat().st_mtime < 1


def test_a_killed_runs_unfinished_scan_is_deleted_when_the_split_is_scanned_again(processor, data_file):
    from mmlora.data.cache_entries import IN_PROGRESS_SECONDS

    cfg = DataConfig(train="x", on_error="skip", max_length=307)
    before = set(cache_root().iterdir())
    scan_split(str(data_file), cfg, processor, progress=False)
    (final,) = set(cache_root().iterdir()) - before
    shutil.rmtree(final)
    leftover, running = (cache_root() / f"{final.name}.{suffix}" for suffix in ("killed01", "running"))
    for folder in (leftover, running):
        folder.mkdir()
        (folder / "rows.arrow").write_bytes(b"\0" * 1000)
    # unchanged since its run was killed; `running` is being written by another process
    os.utime(leftover, (time.time() - IN_PROGRESS_SECONDS - 1,) * 2)
    assert isinstance(scan_split(str(data_file), cfg, processor, progress=False).samples, ArrowSamples)
    assert not leftover.exists() and (running / "rows.arrow").is_file() and (final / "scan.json").is_file()
