"""`mmlora cache`: lists both caches' entries (what each is for, size, last use) and clears only
mmlora's entries, by last use, never what a running process is writing or a user's files."""

import json
import os
import time

import pytest
import torch
from PIL import Image

from mmlora.cli import main
from mmlora.config.schema import DataConfig, ModelConfig
from mmlora.data.collate import generation_batch
from mmlora.data.samples import Sample, user_turn
from mmlora.data.scan import load_data_processor, scan_split
from mmlora.models.loading import load_model_and_processor
from mmlora.models.vision_cache import install_vision_cache, open_store
from mmlora.models.vision_entries import vision_cache_note

DAY = 86400


def age(path, days):
    then = time.time() - days * DAY
    os.utime(path, (then, then))


@pytest.fixture(scope="module")
def processor():
    return load_data_processor(ModelConfig(name="tiny/qwen2-vl"))


@pytest.fixture
def scan_cache(tmp_path, monkeypatch, processor):
    """A scan cache holding the real results of two data files, the first scanned 40 days ago."""
    root = tmp_path / "scan-cache"
    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(root))
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "a.png")
    entries = {}
    for name in ("old", "new"):
        data = tmp_path / f"{name}.jsonl"
        data.write_text(json.dumps({"image": "a.png", "question": f"{name}?", "answer": "red"}) + "\n")
        before = set(root.iterdir()) if root.is_dir() else set()
        scan_split(str(data), DataConfig(train=str(data)), processor, name="train", progress=False)
        (entries[name],) = set(root.iterdir()) - before
    age(entries["old"] / "scan.json", 40)
    return root, entries, tmp_path


def test_list_shows_each_entry_with_its_source_size_and_last_use(scan_cache, tmp_path, capsys):
    root, entries, data = scan_cache
    vision = tmp_path / "vision"
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    model = loaded.model.eval()
    store = open_store(model, loaded.family, {}, str(vision), 1 << 30)
    install_vision_cache(model, loaded.family, store)
    batch = generation_batch(loaded.processor, [Sample([Image.new("RGB", (56, 56))], [user_turn("What?")], "x")])
    with torch.no_grad():
        model(**batch)
    assert main(["cache", "list", "--vision-dir", str(vision)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"scan cache: {root} (2 entries, ")
    old = next(line for line in out if entries["old"].name in line)
    assert f"train split of {data / 'old.jsonl'}" in old and "(40 days ago)" in old
    new = next(line for line in out if entries["new"].name in line)
    assert f"train split of {data / 'new.jsonl'}" in new and "(just now)" in new
    assert any(line.startswith(f"vision cache: {vision} (1 entry, ") for line in out)
    namespace = next(line for line in out if store.namespace in line)
    assert "tiny/qwen2-vl (qwen2_vl, torch.float32), 1 images" in namespace
    age(vision / store.namespace / "about.json", 10)
    open_store(model, loaded.family, {}, str(vision), 0)  # a later run opening it marks it used
    assert time.time() - (vision / store.namespace / "about.json").stat().st_mtime < 60


def test_reading_an_entry_marks_it_used(scan_cache, processor):
    root, entries, data = scan_cache
    scan_split(str(data / "old.jsonl"), DataConfig(train="x"), processor, name="train", progress=False)
    assert time.time() - (entries["old"] / "scan.json").stat().st_mtime < 60


def test_clear_older_than_removes_only_unused_mmlora_entries(scan_cache, capsys):
    root, entries, _ = scan_cache
    user_file = root / "notes.txt"
    user_file.write_text("mine")
    lookalike = root / ("ab" * 16)  # an entry's name and marker, but a file no scan writes
    lookalike.mkdir()
    (lookalike / "scan.json").write_text("{}")
    (lookalike / "thesis.tex").write_text("mine")
    age(lookalike / "scan.json", 90)
    writing = root / f"{'cd' * 16}.abcd1234"  # a scan being written now
    writing.mkdir()
    (writing / "rows.arrow").write_bytes(b"x")
    abandoned = root / f"{'ef' * 16}.zz_y1234"  # a scan killed an hour ago
    abandoned.mkdir()
    (abandoned / "rows.arrow").write_bytes(b"x")
    age(abandoned / "rows.arrow", 1 / 24)
    age(abandoned, 1 / 24)

    assert main(["cache", "clear", "scan", "--older-than", "30", "--yes"]) == 0
    out = capsys.readouterr().out
    assert not entries["old"].exists() and not abandoned.exists()
    assert entries["new"].exists() and writing.exists() and user_file.exists() and lookalike.exists()
    assert "removed 2 cache entries" in out
    assert "holds thesis.tex, which a scan does not write" in out

    assert main(["cache", "clear", "all", "--yes"]) == 0
    assert "left alone: 1 entry being written by a running process" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == sorted([user_file.name, lookalike.name, writing.name])


def test_a_mistaken_cache_folder_loses_nothing(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(b"jpeg")
    (home / "todo.txt").write_text("x")
    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(home))
    monkeypatch.setenv("MMLORA_VISION_CACHE_DIR", str(home))
    assert main(["cache", "clear", "--yes"]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == ["photos", "photos/a.jpg", "todo.txt"]


def test_clear_asks_on_a_terminal_and_refuses_elsewhere_without_yes(scan_cache, monkeypatch, capsys):
    root, entries, _ = scan_cache
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["cache", "clear", "scan"]) == 2
    assert "add --yes to remove them without asking" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda question: next(answers))
    assert main(["cache", "clear", "scan"]) == 1
    assert entries["old"].exists() and entries["new"].exists()
    assert main(["cache", "clear", "scan"]) == 0
    assert not entries["old"].exists() and not entries["new"].exists()


def test_the_vision_cache_size_is_noted_once_past_20_gib(tmp_path):
    namespace = tmp_path / ("12" * 16)
    (namespace / "ab").mkdir(parents=True)
    (namespace / "about.json").write_text(json.dumps({"model": "tiny/qwen2-vl"}))
    assert vision_cache_note(tmp_path) is None
    with open(namespace / "ab" / f"{'ab' * 20}.safetensors", "wb") as handle:
        os.truncate(handle.fileno(), 20 * 2**30)  # sparse: its file size, no disk used
    assert vision_cache_note(tmp_path) == (
        f"vision cache: {tmp_path} has grown to 20.0 GiB (1 entry); `mmlora cache list` shows them, "
        "`mmlora cache clear vision --older-than 30` removes those unused for 30 days")
    assert vision_cache_note(tmp_path) is None


def test_a_cache_folder_that_is_a_file_or_unreadable_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """--scan-dir naming a file is "not a folder" (was "not created yet"); a folder that may not
    be looked into is a one-line error (was a PermissionError traceback from Path.is_dir)."""
    from mmlora.data import cache_entries
    from mmlora.errors import MmloraError

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["cache", "list", "scan", "--scan-dir", str(a_file)]) == 0
    assert f"scan cache: {a_file} (not a folder)" in capsys.readouterr().out
    closed = tmp_path / "closed"
    closed.mkdir()

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(cache_entries.Path, "is_dir", denied)
    with pytest.raises(MmloraError, match=f"cannot read the cache folder {closed} \\(Permission denied\\)"):
        cache_entries.root_items(closed)
    # the end-of-run size note stays silent rather than failing the run it follows
    assert vision_cache_note(closed) is None


def test_an_item_removed_while_the_cache_is_measured_is_skipped(tmp_path, monkeypatch):
    """A scan renames its temporary files while another process measures the cache."""
    from mmlora.data import cache_entries

    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "gone.arrow").write_bytes(b"x" * 10)
    (entry / "kept.arrow").write_bytes(b"x" * 7)
    real_scandir = os.scandir

    def scandir_then_remove(path):
        items = list(real_scandir(path))
        (entry / "gone.arrow").unlink(missing_ok=True)
        return iter(items)

    monkeypatch.setattr(cache_entries.os, "scandir", scandir_then_remove)
    tree = cache_entries.inspect_tree(entry, lambda parts, is_dir: "ok")
    assert (tree.size, tree.files, tree.unexpected) == (7, 1, None)
