"""mmlora vs the baseline users would write (HF Trainer + PEFT), same model, data, LoRA shape,
global batch and steps, measured side by side in one run. See bench/README.md.

    python bench/run.py                     # CPU workload (tiny model), writes bench/results/cpu.md
    python bench/run.py --workload gpu      # Qwen2-VL-2B architecture on a CUDA GPU -> gpu.md

Every run is a fresh process (clean peak memory, honest time to first step); the configurations
alternate in order round after round, so load from other processes hits all of them alike, and
the table reports the median of the rounds.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before torch is imported: time to first step counts imports and loading

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu_report import MFU_FORMULA, mfu, peak_bf16_flops  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402

CONFIGS = {
    "baseline": "HF Trainer + PEFT, padded batches (bench/README.md)",
    "mmlora": "mmlora, length-grouped batches",
    "mmlora-packed": "mmlora, data.packing=true",
}


def run_one(config: str, workload_name: str, data: Path, model: str, out: Path, result: Path) -> None:
    """One configuration in this process; writes its Measurement (and estimates) as JSON."""
    import torch

    from bench.measure import Meter
    from bench.runners import load_bench_processor, mmlora_recipe, run_baseline, run_mmlora

    workload = next(w for ws in WORKLOADS.values() for w in ws if w.name == workload_name)
    cuda = not workload.on_cpu
    processor = load_bench_processor(workload, model)
    meter = Meter(START, processor.pad_token_id, processor.image_token_id, workload.warmup_steps,
                  workload.batch_size, cuda)
    if config == "baseline":
        run_baseline(workload, data, model, out, meter)
        recipe, attn = mmlora_recipe(workload, data, model, out, packing=False), None  # describes the model
    else:
        recipe, attn = run_mmlora(workload, data, model, out, meter, packing=config == "mmlora-packed")
    m = meter.finish().to_json()
    m["threads"] = torch.get_num_threads()
    if cuda:
        m.update(estimates(recipe, m, attn))
    result.write_text(json.dumps(m))


def estimates(recipe, m: dict, attn: str | None) -> dict:
    """MFU; for mmlora's runs (attn given) also the planner's peak memory for the widest batch
    seen and the step time at a measured matmul rate."""
    import torch

    from mmlora.models.memory import estimate_memory, measure_matmul_rate, meta_lora_model, training_flops

    rows, width = m["widest"]
    model, family = meta_lora_model(recipe, torch.bfloat16)
    steps = max(1, m["measured_steps"])
    mean_length = m["real_tokens"] / max(1, m["samples"])
    patches = 4 * m["visual_tokens"] / steps  # 2x2 merge: 4 vision patches per visual token
    useful = training_flops(model, family, m["real_tokens"] / steps, mean_length, patches)
    name = torch.cuda.get_device_name()
    wall_step = m["measured_seconds"] / steps  # data waits included
    out = {"mfu": mfu(useful, wall_step, peak_bf16_flops(name)), "gpu": name, "model_flops_per_step": useful}
    if attn is None:
        return out
    estimate = estimate_memory(recipe, batch_size=rows, seq_len=width, visual_tokens=int(m["visual_tokens"] / steps / rows),
                               model=model, dtype=torch.bfloat16, attn_implementation=attn,
                               trained_tokens=m["most_trained"])
    rate = measure_matmul_rate("cuda", torch.bfloat16)
    done = training_flops(model, family, m["slots"] / steps, width, patches)
    return {**out, "estimated_peak_memory": estimate.total, "estimated_step_ms": 1000 * done / rate,
            "matmul_tflops": rate / 1e12}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, {memory} GiB RAM, GPU: {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def _median(results: list[dict], key):
    values = [key(r) for r in results if key(r) is not None]
    return statistics.median(values) if values else None


def summarize(results: list[dict]) -> dict:
    return {
        "tokens_per_s": _median(results, lambda r: r["real_tokens"] / r["measured_seconds"]),
        "samples_per_s": _median(results, lambda r: r["samples"] / r["measured_seconds"]),
        "tokens_per_cpu_s": _median(results, lambda r: r["real_tokens"] / r["measured_cpu_seconds"]),
        "rounds": [round(r["real_tokens"] / r["measured_seconds"]) for r in results],
        "padding": _median(results, lambda r: 1 - r["real_tokens"] / r["slots"]),
        "peak_mib": _median(results, lambda r: r["peak_memory"] / 2**20),
        "first_step_s": _median(results, lambda r: r["time_to_first_step"]),
        "step_ms": _median(results, lambda r: statistics.mean(r["step_ms"])),
        "wait_ms": _median(results, lambda r: statistics.mean(r["data_wait_ms"])),
        "mfu": _median(results, lambda r: r.get("mfu")),
        "est_mib": _median(results, lambda r: r.get("estimated_peak_memory") and r["estimated_peak_memory"] / 2**20),
        "est_step_ms": _median(results, lambda r: r.get("estimated_step_ms")),
    }


def table(workload, summaries: dict[str, dict], gpu: bool) -> str:
    base = summaries["baseline"]
    head = ("| configuration | tokens/s | x base | samples/s | x base | tokens/CPU-s | x base | padding "
            "| peak memory (MiB) | x base | first step (s) | step (ms) | data wait/step (ms) |")
    sep = "|---" * 13 + "|"
    if gpu:
        head += " MFU (%) | est. peak (MiB) | est. step (ms) |"
        sep += "---|---|---|"
    checkpointing = "on" if workload.gradient_checkpointing else "off"
    lines = [f"### {workload.name}: batch {workload.batch_size}, {workload.steps} steps "
             f"({workload.warmup_steps} warm-up steps not timed), gradient checkpointing {checkpointing}, "
             "median of the rounds", "", head, sep]
    for config, s in summaries.items():
        row = (f"| {config} | {s['tokens_per_s']:.0f} | {s['tokens_per_s'] / base['tokens_per_s']:.2f} "
               f"| {s['samples_per_s']:.1f} | {s['samples_per_s'] / base['samples_per_s']:.2f} "
               f"| {s['tokens_per_cpu_s']:.0f} | {s['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f} "
               f"| {100 * s['padding']:.1f}% | {s['peak_mib']:.0f} | {s['peak_mib'] / base['peak_mib']:.2f} "
               f"| {s['first_step_s']:.1f} | {s['step_ms']:.0f} | {s['wait_ms']:.0f} |")
        if gpu:
            fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
            row += (f" {fmt(s['mfu'] and 100 * s['mfu'], '.1f')} | {fmt(s['est_mib'], '.0f')} "
                    f"| {fmt(s['est_step_ms'], '.0f')} |")
        lines.append(row)
    lines += ["", "tokens/s of each round: " + "; ".join(f"{c} {s['rounds']}" for c, s in summaries.items())]
    return "\n".join(lines)


def shared_note(load: list[float]) -> str:
    """Say so when the load average shows other processes competing for the cores."""
    busy = max(load) > (os.cpu_count() or 1)
    return " (above the core count: other processes shared the machine)" if busy else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted([*WORKLOADS, "scan", "vision-cache"]), default="cpu",
                        help="scan: the data pre-scan (bench/scan_bench.py), its own table in results/scan.md; "
                             "vision-cache: 3 epochs with and without train.vision_cache (bench/vision_cache.py)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="--workload vision-cache only: cuda runs it on Qwen2-VL-2B's architecture")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration (alternating order)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the table")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's, one per core); "
                        "1 keeps runs stable on a machine other processes share")
    parser.add_argument("--only", metavar="NAME", help="run this one workload of --workload (e.g. gpu-448)")
    parser.add_argument("--json", type=Path, help="also write the medians of every configuration as JSON "
                        "({workload: {config: summary, ...}, ...}: what bench/gpu_check.py reads)")
    parser.add_argument("--dry-run", action="store_true", help="GPU workloads without a GPU: build the data, "
                        "model and one batch, report the planner's estimate and the FLOPs; train nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workload-name", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.workload_name, args.data, args.model, args.run_dir, args.result)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.workload == "scan":
        from bench.scan_bench import run_scan_bench

        report, path = run_scan_bench(args.out)
        print(report)
        print(f"[bench] wrote {path}")
        return 0
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every run
    if args.workload == "vision-cache":
        return vision_cache_report(args)
    from bench.workloads import write_data, write_model_dir

    gpu = args.workload == "gpu"
    workloads = [w for w in WORKLOADS[args.workload] if args.only in (None, w.name)]
    if not workloads:
        parser.error(f"--only {args.only}: not a {args.workload} workload "
                     f"({', '.join(w.name for w in WORKLOADS[args.workload])})")
    if args.dry_run and not gpu:
        parser.error("--dry-run is for --workload gpu (the CPU workloads run as they are)")
    sections, load, summaries, threads = [], [os.getloadavg()[0]], {}, None
    with tempfile.TemporaryDirectory(prefix="mmlora-bench-") as tmp:
        tmp = Path(tmp)
        for workload in workloads:
            if args.dry_run:
                from bench.dry_run import dry_run

                section, summaries[workload.name] = dry_run(workload, tmp)
                sections.append(section)
                continue
            data = write_data(tmp / workload.name, workload)
            model = write_model_dir(tmp / f"{workload.name}-model", workload)
            results = {config: [] for config in CONFIGS}
            for round_ in range(args.rounds):
                order = list(CONFIGS) if round_ % 2 == 0 else list(reversed(CONFIGS))
                for config in order:
                    result = tmp / f"{workload.name}-{config}-{round_}.json"
                    print(f"[bench] {workload.name} round {round_ + 1}/{args.rounds}: {config}", flush=True)
                    subprocess.run([sys.executable, __file__, "--one", config, "--workload-name", workload.name,
                                    "--data", str(data), "--model", model, "--run-dir", str(tmp / "run"),
                                    "--result", str(result)], check=True, cwd=ROOT)
                    results[config].append(json.loads(result.read_text()))
                    load.append(os.getloadavg()[0])
            summaries[workload.name] = {c: summarize(r) for c, r in results.items()}
            sections.append(table(workload, summaries[workload.name], gpu))
            threads = results["baseline"][0]["threads"]
    report = "\n".join([
        f"# mmlora benchmark: {args.workload} workload", "",
        f"Machine: {machine()}; torch threads per run: {threads}; 1-minute load average during the runs: "
        f"{min(load):.1f}-{max(load):.1f}{shared_note(load)}.", "",
        f"Command: `python bench/run.py --workload {args.workload} --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}{f' --only {args.only}' if args.only else ''}"
        f"{' --dry-run' if args.dry_run else ''}` "
        f"({time.strftime('%Y-%m-%d')}). Configurations: "
        + "; ".join(f"**{k}**: {v}" for k, v in CONFIGS.items()) + ". Columns: bench/README.md.", "",
        *([MFU_FORMULA, ""] if gpu else []),
        *sections, "",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.workload}{'-' + args.only if args.only else ''}{'-dry-run' if args.dry_run else ''}.md"
    path.write_text(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sections": dict(zip(summaries, sections)), "summaries": summaries}, indent=1))
    print(report)
    print(f"[bench] wrote {path}")
    return 0


def vision_cache_report(args) -> int:
    """--workload vision-cache: the four runs in this process, report to <out>/<device>-vision-cache.md."""
    from bench.vision_cache import run_bench

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="mmlora-bench-") as tmp:
        body, _ = run_bench(Path(tmp), args.device, args.rounds)
    load.append(os.getloadavg()[0])
    import torch

    report = "\n".join([
        "# mmlora benchmark: vision-cache workload", "",
        f"Machine: {machine()}; torch threads: {torch.get_num_threads()}; 1-minute load average: "
        f"{min(load):.1f}-{max(load):.1f}{shared_note(load)}.", "",
        f"Command: `python bench/run.py --workload vision-cache --device {args.device} --rounds {args.rounds}` "
        f"({time.strftime('%Y-%m-%d')}). "
        "tokens/s: real (non-padding) tokens per second over epochs 2-3 (epoch 1 fills the cache). "
        "See bench/README.md.", "", body, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.device}-vision-cache.md"
    path.write_text(report)
    print(report)
    print(f"[bench] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
