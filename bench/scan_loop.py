"""One scan worker's loop in this process, for profilers (bench/README.md, "Profiling the scan").

    python bench/scan_loop.py --rows 12000                      # CPU seconds of the loop
    py-spy record -f raw -o out.txt -- python bench/scan_loop.py  # where they go
    valgrind --tool=callgrind --instr-atstart=no python bench/scan_loop.py --rows 1024 --callgrind

Writes bench/scan_data.py's data (once, into --data), stores its rows as the Arrow scan's step 1
does, then runs the step-2 function (arrowscan.RowScanner, the tiny Qwen2-VL's processor) over
batches of 512 rows after a first batch that fills its memos, as a worker's would be. With
--callgrind, valgrind counts instructions of that loop only: a count that other processes on the
machine do not change, unlike seconds (this machine's virtual CPUs have no hardware counters
for `perf`), so two versions of the code compare within a fraction of a percent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BATCH = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6144, help="rows timed after the first batch (default 6144)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mmlora-scan-loop",
                        help="folder for the data (written once, reused)")
    parser.add_argument("--callgrind", action="store_true",
                        help="switch valgrind's callgrind instrumentation on for the loop only")
    args = parser.parse_args()

    import datasets

    from bench.scan_data import write_scan_data
    from mmlora.config.schema import DataConfig, ModelConfig
    from mmlora.data.arrowscan import RowScanner, write_rows
    from mmlora.data.loading import open_rows
    from mmlora.data.scan import load_data_processor

    total = args.rows + BATCH
    data = args.data / f"data-{total}" / "train.jsonl"
    if not data.exists():
        write_scan_data(data.parent, total)
    processor = load_data_processor(ModelConfig(name="tiny/qwen2-vl"))
    cfg = DataConfig(train=str(data), on_error="skip", max_length=1024)
    opened, column_map, rows = open_rows(str(data), cfg, raw=True)
    with tempfile.TemporaryDirectory() as work:
        write_rows(Path(work) / "rows.arrow", rows, "train", False)
        table = datasets.Dataset.from_file(str(Path(work) / "rows.arrow"))
        scanner = RowScanner(processor, cfg, column_map, replace(opened, rows=()), False, "train", None)
        scanner(table[0:BATCH])  # tools built, memos filled: as a worker after its first batch
        batches = [table[i:i + BATCH] for i in range(BATCH, total, BATCH)]
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, stdout=subprocess.DEVNULL)
        start = time.process_time()
        for batch in batches:
            scanner(batch)
        seconds = time.process_time() - start
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True, stdout=subprocess.DEVNULL)
    print(f"scan loop: {args.rows} rows in {seconds:.2f} CPU-s ({seconds / args.rows * 1e6:.0f} us per row)")


if __name__ == "__main__":
    main()
