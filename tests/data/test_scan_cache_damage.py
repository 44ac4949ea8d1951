"""The pre-scan's result cache under attack (mmlora/data/scan_guards.py): a damaged result is logged,
deleted and scanned again; an unwritable cache or a full disk scans without it, with one warning
line naming the folder and the setting to change. Never a traceback, never a trusted bad result."""

import dataclasses
import errno
import json
import logging
import os
import pickle
import shutil
import signal

import pyarrow as pa
import pytest

from mmlora.config.schema import DataConfig
from mmlora.data import arrowscan, scan_guards
from mmlora.data.scan import scan_serially, scan_split
from mmlora.data.scanstore import cache_root
from mmlora.errors import MmloraError

Q = "What color is the shape?"


@pytest.fixture
def data_file(folder):
    rows = [{"image": "a.png", "question": Q, "answer": "red"}, {"image": "gone.png", "question": Q, "answer": "x"},
            {"image": "a.png", "question": "Which shape?", "answer": "a square"}]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def report(scan) -> tuple:
    return ([(p.reason, p.detail, p.where) for p in scan.problems], scan.lengths, scan.image_tokens,
            [dataclasses.asdict(s) for s in scan.samples])


def scans_run(monkeypatch) -> list:
    calls, scan_into = [], arrowscan._scan_into
    monkeypatch.setattr(arrowscan, "_scan_into", lambda *a, **k: calls.append(1) or scan_into(*a, **k))
    return calls


def result_folder(before: set):
    (new,) = {p for p in cache_root().iterdir() if p.is_dir()} - before
    return new


def scanned(data_file, cfg, processor) -> tuple:
    """A scan of `data_file` and the result folder it wrote (a new one: its fingerprint was not scanned yet)."""
    before = set(cache_root().iterdir())
    scan = scan_split(str(data_file), cfg, processor, progress=False)
    return scan, result_folder(before)


def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def older_layout(folder):  # an Arrow file of other columns, as another layout would write
    with pa.OSFile(str(folder / "scan.arrow"), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("x", pa.int64())])):
        pass


def overwrite(path, old: bytes, new: bytes):  # same length: the file still reads as Arrow
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))


DAMAGE = {
    "scan.json cut short": lambda f: cut(f / "scan.json"),
    "scan.json garbage": lambda f: (f / "scan.json").write_bytes(b"\xff\xfe not json"),
    "scan.json a list": lambda f: (f / "scan.json").write_text("[1, 2]"),
    "scan.json naming a file elsewhere": lambda f: (f / "scan.json").write_text(json.dumps(
        {"files": ["../../etc/passwd"], "images": {}, "expansions": []})),
    "arrow cut short": lambda f: cut(f / "scan.arrow"),
    "arrow missing": lambda f: (f / "scan.arrow").unlink(),
    "arrow garbage": lambda f: (f / "scan.arrow").write_bytes(b"garbage" * 100),
    "arrow of another layout": older_layout,
    # inside a stored sample (the "samples" column, read only when training reaches the sample)
    "a stored answer garbled": lambda f: overwrite(f / "scan.arrow", b"a square", b"a sqXare"),
    "a stored sample no longer JSON": lambda f: overwrite(f / "scan.arrow", b'"a square"', b'"a square '),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_cached_result_is_logged_deleted_and_scanned_again(processor, data_file, monkeypatch, caplog,
                                                                     damage):
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x", on_error="skip")
    scan, folder = scanned(data_file, cfg, processor)
    first = report(scan)
    DAMAGE[damage](folder)
    with caplog.at_level(logging.WARNING):
        again = scan_split(str(data_file), cfg, processor, progress=False)
    assert len(calls) == 2 and report(again) == first
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"damaged scan result in {folder}"]
    assert report(scan_split(str(data_file), cfg, processor, progress=False)) == first and len(calls) == 2


def test_a_damaged_result_that_cannot_be_deleted_is_never_trusted(processor, data_file, monkeypatch, caplog):
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x", on_error="skip", max_length=301)
    scan, folder = scanned(data_file, cfg, processor)
    first = report(scan)
    cut(folder / "scan.arrow")
    monkeypatch.setattr(scan_guards.shutil, "rmtree", lambda *a, **k: None)  # a read-only cache folder
    with caplog.at_level(logging.WARNING):
        again = scan_split(str(data_file), cfg, processor, progress=False)
    assert report(again) == first and len(calls) == 2
    assert caplog.records[0].getMessage().endswith(": could not delete it (delete it by hand), scanning again")


def test_a_cache_root_that_is_a_file_scans_without_it_with_one_warning(processor, data_file, tmp_path, monkeypatch,
                                                                       caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(tmp_path / "not-a-folder"))
    monkeypatch.setattr(scan_guards, "warned", set())
    cfg = DataConfig(train="x", on_error="skip")
    expected = report(scan_serially(str(data_file), cfg, processor, progress=False))
    with caplog.at_level(logging.WARNING):
        assert report(scan_split(str(data_file), cfg, processor, progress=False)) == expected
        assert report(scan_split(str(data_file), cfg, processor, progress=False)) == expected
    assert [r.getMessage() for r in caplog.records] == [
        f"scan results cannot be written in {tmp_path / 'not-a-folder'} (not a folder): scanning without the cache; "
        "set $MMLORA_SCAN_CACHE to a writable folder, or data.scan_cache: false to scan without it"]


def test_a_full_disk_while_writing_the_result_scans_in_one_process(processor, data_file, tmp_path, monkeypatch,
                                                                   caplog):
    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(scan_guards, "warned", set())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(arrowscan, "write_rows", disk_full)
    cfg = DataConfig(train="x", on_error="skip")
    with caplog.at_level(logging.WARNING):
        scan = scan_split(str(data_file), cfg, processor, progress=False)
    assert isinstance(scan.samples, list)  # the single-process scan, in memory
    assert report(scan) == report(scan_serially(str(data_file), cfg, processor, progress=False))
    assert [r.getMessage() for r in caplog.records] == [
        f"scan results cannot be written in {tmp_path / 'cache'} (No space left on device): scanning without the "
        "cache; set $MMLORA_SCAN_CACHE to a writable folder, or data.scan_cache: false to scan without it"]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []  # no half-written result left


def test_a_result_written_without_checksums_is_scanned_again(processor, data_file, monkeypatch, caplog):
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x", on_error="skip", max_length=302)
    scan, folder = scanned(data_file, cfg, processor)
    first = report(scan)
    meta = json.loads((folder / "scan.json").read_text())
    assert set(meta.pop("checksums")) == {"scan.arrow"}
    (folder / "scan.json").write_text(json.dumps(meta))  # as an earlier mmlora wrote it
    with caplog.at_level(logging.INFO, logger="mmlora.data.scan_seal"):
        assert report(scan_split(str(data_file), cfg, processor, progress=False)) == first and len(calls) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        f"scan result {folder} has no checksums (written by an earlier mmlora): scanning again"]
    assert "checksums" in json.loads((folder / "scan.json").read_text())  # rewritten, read from now on
    assert report(scan_split(str(data_file), cfg, processor, progress=False)) == first and len(calls) == 2


def test_a_result_removed_or_replaced_while_in_use_is_never_a_traceback_nor_another_scans_sample(
        processor, data_file):
    cfg = DataConfig(train="x", on_error="skip", max_length=305)
    scan, folder = scanned(data_file, cfg, processor)
    expected = list(scan.samples)
    spawned = pickle.dumps(scan.samples)  # what a DataLoader worker started by spawn gets
    assert list(pickle.loads(spawned)) == expected
    shutil.rmtree(folder)  # `mmlora cache clear scan` while training
    assert list(scan.samples) == expected  # this process, and workers forked from it, keep their mapping
    gone = (f"scan result {folder}: its files were removed or replaced since it was read; run `mmlora cache clear "
            "scan` and start again (the data is scanned anew)")
    with pytest.raises(MmloraError) as error:
        pickle.loads(spawned)[0]
    assert str(error.value) == gone
    scan_split(str(data_file), cfg, processor, progress=False)  # another run writes the result anew
    with pytest.raises(MmloraError) as error:
        pickle.loads(spawned)[0]
    assert str(error.value) == gone


def test_a_stored_sample_garbled_after_the_result_was_read_is_a_one_line_error(processor, data_file):
    cfg = DataConfig(train="x", on_error="skip", max_length=306)
    scan, folder = scanned(data_file, cfg, processor)
    assert scan.samples[1].messages[-1]["content"] == [{"type": "text", "text": "a square"}]
    path, info = folder / "scan.arrow", (folder / "scan.arrow").stat()
    overwrite(path, b'"a square"', b'"a square ')  # in place, its time kept: as a failing disk would
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert scan.samples[0].messages[-1]["content"] == [{"type": "text", "text": "red"}]
    with pytest.raises(MmloraError) as error:
        scan.samples[1]
    assert str(error.value).startswith(f"scan result {folder}: its sample 1 cannot be read (JSONDecodeError: ")
    assert str(error.value).endswith("; run `mmlora cache clear scan` and start again (the data is scanned anew)")


def test_a_scan_process_killed_mid_scan_is_a_one_line_error(processor, data_file, monkeypatch):
    rows = [{"image": "a.png", "question": f"{Q} {i}", "answer": "red"} for i in range(8)]
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parent, scan_batch = os.getpid(), arrowscan.RowScanner._scan_batch

    def killed_in_a_worker(self, batch):  # as the kernel's OOM killer ends a scan process
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return scan_batch(self, batch)

    monkeypatch.setattr(arrowscan.RowScanner, "_scan_batch", killed_in_a_worker)
    before = set(cache_root().iterdir())
    with pytest.raises(MmloraError) as error:
        scan_split(str(data_file), DataConfig(train="x", num_proc=2), processor, progress=False)
    assert str(error.value) == (f"data.train: {data_file}: a scan process was killed before the scan ended (out of "
                                "memory?); set data.num_proc lower (fewer processes use less memory) and run again")
    assert set(cache_root().iterdir()) == before  # no half-written result left
