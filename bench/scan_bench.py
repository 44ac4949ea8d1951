"""The pre-scan benchmark (`python bench/run.py --workload scan`, bench/README.md): rows per
second of the first scan of a split (Arrow, data.num_proc auto), of the second (unchanged data:
read from the cache), and the peak memory at 5k and at 50k rows; the single-process scan of
earlier versions (scan.scan_serially) at 5k rows for reference. Data: bench/scan_data.py.

Every measurement runs in a fresh process (clean peak memory; nothing cached in memory), with the
tiny Qwen2-VL's processor (the scan loads the processor only, never weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = (5_000, 50_000)
TARGETS = {"first": 2500, "second_speedup": 5.0, "memory_ratio": 1.3}


def measure_one(mode: str, data: Path, result: Path) -> None:
    """One scan in this process: `first`/`second` (scan_split; the cache folder decides which),
    or `serial` (the single-process scan); writes seconds, counts and peak memory as JSON."""
    from bench.measure import PssSampler
    from mmlora.config.schema import DataConfig, ModelConfig
    from mmlora.data.scan import load_data_processor, scan_serially, scan_split

    processor = load_data_processor(ModelConfig(name="tiny/qwen2-vl"))
    cfg = DataConfig(train=str(data), on_error="skip", max_length=1024)
    sampler, cpu = PssSampler(interval=0.25), _cpu_seconds()  # reading smaps often costs the scan CPU
    start = time.perf_counter()
    scan = (scan_serially if mode == "serial" else scan_split)(str(data), cfg, processor, progress=False)
    seconds = time.perf_counter() - start
    result.write_text(json.dumps({"seconds": seconds, "cpu": _cpu_seconds() - cpu, "rows": scan.rows,
                                  "samples": len(scan.samples), "bad": len(scan.problems), "peak": sampler.stop()}))


def _cpu_seconds() -> float:
    """CPU time of this process and its ended children (the scan's worker processes)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def run_scan_bench(out_dir: Path) -> tuple[str, Path]:
    """Every measurement (module docstring); the markdown section and the file it was written to."""
    from bench.scan_data import write_scan_data

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results, load = {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="mmlora-scan-bench-") as tmp:
        tmp = Path(tmp)
        for rows in SIZES:
            data = write_scan_data(tmp / f"data-{rows}", rows)
            env["MMLORA_SCAN_CACHE"] = str(tmp / f"cache-{rows}")  # empty: the first scan scans
            modes = ("first", "second", "serial") if rows == SIZES[0] else ("first", "second")
            for mode in modes:
                print(f"[bench] scan {rows} rows: {mode}", flush=True)
                out = tmp / f"{rows}-{mode}.json"
                subprocess.run([sys.executable, __file__, "--one", mode, "--data", str(data), "--result", str(out)],
                               check=True, cwd=ROOT, env=env)
                results[(rows, mode)] = json.loads(out.read_text())
                load.append(os.getloadavg()[0])
    section = scan_table(results, load)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "scan.md"
    path.write_text(section)
    return section, path


def scan_table(results: dict, load: list[float]) -> str:
    big, small = SIZES[-1], SIZES[0]
    first, second = results[(big, "first")], results[(big, "second")]
    speed = first["rows"] / first["seconds"]
    speedup = first["seconds"] / second["seconds"]
    ratio = results[(big, "first")]["peak"] / results[(small, "first")]["peak"]
    lines = [
        "# mmlora benchmark: scan workload", "",
        f"Machine: {os.cpu_count()} cores; 1-minute load average during the runs: {min(load):.1f}-{max(load):.1f}"
        f"{' (above the core count: other processes shared the machine)' if max(load) > (os.cpu_count() or 1) else ''}. "
        f"Command: `python bench/run.py --workload scan` ({time.strftime('%Y-%m-%d')}). Data: bench/scan_data.py "
        "(10 rows per image, adjacent: 60% VQA, 30% captions, 10% two-turn chats, 0.2% bad rows); processor: tiny/qwen2-vl; "
        "data.num_proc auto, data.image_check=decode. CPU seconds: the scanning process and its workers "
        "(steadier than wall time when other processes share the cores).", "",
        "| scan | rows | samples | bad rows | seconds | rows/s | CPU seconds | rows/CPU-s | peak memory (PSS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"first": "first (Arrow, parallel)", "second": "second (cached)", "serial": "single process (before)"}
    for (rows, mode), r in results.items():
        lines.append(f"| {names[mode]} | {r['rows']} | {r['samples']} | {r['bad']} | {r['seconds']:.2f} | "
                     f"{r['rows'] / r['seconds']:.0f} | {r['cpu']:.2f} | {r['rows'] / r['cpu']:.0f} | {r['peak'] / 2**20:.0f} MiB |")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += [
        "", f"Targets at {big} rows: first scan {speed:.0f} rows/s (target >= {TARGETS['first']}: "
        f"{verdict(speed >= TARGETS['first'])}); second scan {speedup:.1f}x faster than the first (target >= "
        f"{TARGETS['second_speedup']:g}x: {verdict(speedup >= TARGETS['second_speedup'])}); peak memory "
        f"{ratio:.2f}x that at {small} rows (target <= {TARGETS['memory_ratio']}: "
        f"{verdict(ratio <= TARGETS['memory_ratio'])}).", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", choices=("first", "second", "serial"), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    measure_one(args.one, args.data, args.result)
