"""The scan benchmark's data (bench/scan_data.py): the same seed and sizes give the same files, in
a fresh folder or over one that already holds some of the images (a rerun)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not installed

from bench.scan_data import write_scan_data  # noqa: E402


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_over_part_of_the_images_writes_the_same_rows_and_images(tmp_path):
    fresh = write_scan_data(tmp_path / "fresh", 400, seed=3).parent
    rerun = write_scan_data(tmp_path / "rerun", 400, seed=3).parent
    for image in sorted((rerun / "images").iterdir())[::2]:  # an interrupted or partly cleaned folder
        image.unlink()
    (rerun / "train.jsonl").unlink()
    assert write_scan_data(rerun, 400, seed=3) == rerun / "train.jsonl"
    assert files(rerun) == files(fresh) and len(files(fresh)) == 41
    assert files(write_scan_data(tmp_path / "other", 400, seed=4).parent) != files(fresh)


def test_the_scan_loop_profiler_runs_one_workers_loop(tmp_path, monkeypatch, capsys):
    from bench import scan_loop

    # In this process (torch and transformers already imported by the suite): the script's own
    # argument parsing, data, step 1 and loop, as `python bench/scan_loop.py` runs them.
    monkeypatch.setattr(sys, "argv", ["scan_loop.py", "--rows", "512", "--data", str(tmp_path)])
    scan_loop.main()
    assert "scan loop: 512 rows in" in capsys.readouterr().out
    assert (tmp_path / "data-1024" / "train.jsonl").is_file()
