"""The scan cache's end-of-scan note: where it lives and how big it is, once each time it grows
past another 20 GiB (sizes are file sizes: sparse files stand in for big results)."""

import json
import os

from PIL import Image

from mmlora.config.schema import DataConfig, ModelConfig
from mmlora.data.cache_entries import SIZE_NOTE_STEP
from mmlora.data.scan import load_data_processor, scan_split
from mmlora.data.scan_cache import list_scan_cache


def big_entry(root, name, size):
    """A scan result folder whose arrow file is `size` bytes long (sparse: no disk used)."""
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "scan.json").write_text(json.dumps({"files": ["scan.arrow"], "images": {}, "expansions": []}))
    with open(entry / "scan.arrow", "wb") as handle:
        os.truncate(handle.fileno(), size)


def test_the_scan_notes_the_cache_size_once_per_20_gib_step(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(root))
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    processor = load_data_processor(ModelConfig(name="tiny/qwen2-vl"))

    def scan(answer):
        data = tmp_path / f"{answer}.jsonl"
        data.write_text(json.dumps({"image": "a.png", "question": "Colour?", "answer": answer}) + "\n")
        scan_split(str(data), DataConfig(train=str(data)), processor, progress=False)
        return [line for line in capsys.readouterr().err.splitlines() if "scan cache:" in line]

    assert scan("black") == []
    big_entry(root, "a" * 32, SIZE_NOTE_STEP + 2**30)
    (note,) = scan("white")
    size = list_scan_cache(root).size
    assert note.startswith(f"scan cache: {root} has grown to 21.0 GiB (3 entries); `mmlora cache list` shows them")
    assert size // 2**30 == 21
    assert scan("white") == [] and scan("grey") == []  # noted once, not at every run
    big_entry(root, "b" * 32, SIZE_NOTE_STEP)
    assert len(scan("red")) == 1  # past 40 GiB: noted again
    assert scan("red") == []
