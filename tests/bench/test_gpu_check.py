"""The GPU check's parts that run without a GPU (bench/gpu_check.py, bench/gpu_report.py): the
MFU formula against a count by hand, the planner-vs-measured comparison, pytest's real JUnit
output read back, the report, the time budget, and the whole check as a dry run on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench/ is not installed

from bench.gpu_report import PlannerCheck, failures, mfu, parse_junit, peak_bf16_flops, planner_checks, render  # noqa: E402


def test_model_flops_and_mfu_match_a_count_by_hand():
    from mmlora.config.schema import LoraConfig, ModelConfig
    from mmlora.models.loading import load_model_and_processor
    from mmlora.models.lora import apply_lora
    from mmlora.models.memory import training_flops

    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    model = apply_lora(loaded.model, loaded.family, LoraConfig(r=4, dropout=0.0))
    # tiny Qwen2-VL (assets/tiny-qwen2-vl/config.json): text hidden 64, MLP 128, 2 layers, 4 heads
    # of 16 and 2 key/value heads; vocabulary 499; vision depth 2, width 32, MLP ratio 2, merger
    # 4*32 -> 128 -> 64. LoRA r=4 on q, k, v, o, gate, up, down.
    frozen = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)  # 73,728
    lora = 2 * 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + 3 * (64 + 128))  # 8,192
    head = 499 * 64
    vision = 2 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32) + (128 * 128 + 128 * 64)  # 40,960
    tokens, length, patches = 100, 50, 40
    by_hand = (4 * tokens * frozen + 6 * tokens * lora + 4 * tokens * head
               + 3 * 2 * tokens * length * (4 * 16) * 2 + 2 * patches * vision)
    flops = training_flops(model, loaded.family, tokens, length, patches)
    assert flops == by_hand == 54_297_600
    # 0.5 s per step on an H200: F / t / P
    assert peak_bf16_flops("NVIDIA H200") == 989e12 and peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert mfu(flops, 0.5, peak_bf16_flops("NVIDIA H200")) == pytest.approx(54_297_600 / 0.5 / 989e12, rel=1e-12)
    assert peak_bf16_flops("Some Future GPU") is None and mfu(flops, 0.5, None) is None


def test_planner_checks_pair_estimates_with_measured_peaks():
    bench = {"gpu-448": {"baseline": {"peak_mib": 30000.0, "est_mib": None},  # no recipe: no estimate
                         "mmlora": {"peak_mib": 20000.0, "est_mib": 23000.0},  # +15.0%: the edge, within
                         "mmlora-packed": {"peak_mib": 20000.0, "est_mib": 16900.0}}}  # -15.5%: outside
    checks = planner_checks(bench)
    assert [(c.config, round(c.gap, 3), c.within) for c in checks] == [("mmlora", 0.15, True),
                                                                      ("mmlora-packed", -0.155, False)]
    state = {"steps": {"tests": {"status": "passed"}}, "bench": {"gpu-448": {"summaries": bench["gpu-448"]}}}
    assert failures(state) == ["planner gpu-448/mmlora-packed: -15.5%"]
    report = render(state)
    assert "| gpu-448 | mmlora | 20000 | 23000 | +15.0% | yes |" in report
    assert "| gpu-448 | mmlora-packed | 20000 | 16900 | -15.5% | NO |" in report
    assert "Result: FAILED: planner gpu-448/mmlora-packed: -15.5%." in report
    assert PlannerCheck("w", "c", 100.0, 90.0).gap == pytest.approx(-0.1)


def test_junit_of_a_real_pytest_run_is_read_case_by_case(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_wrong():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skipif(True, reason='needs a CUDA GPU')\ndef test_gpu():\n    pass\n"
    )
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    str(tmp_path / "test_sample.py")], cwd=tmp_path, capture_output=True, timeout=120)
    cases = {c["name"]: c for c in parse_junit(junit)}
    assert {name: c["outcome"] for name, c in cases.items()} == {
        "test_sample::test_ok": "passed", "test_sample::test_wrong": "failed", "test_sample::test_gpu": "skipped"}
    assert "one is not two" in cases["test_sample::test_wrong"]["message"]
    assert cases["test_sample::test_gpu"]["message"] == "needs a CUDA GPU"
    state = {"steps": {"tests": {"status": "failed", "seconds": 3.0, "note": "1 passed, 1 failed, 1 skipped"}},
             "tests": list(cases.values())}
    assert failures(state) == ["step tests: failed", "test test_sample::test_wrong: failed"]


def run_check(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_a_spent_budget_still_writes_the_results_and_fails(tmp_path):
    done = run_check("--dry-run", "--budget", "1", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 1
    state = json.loads((tmp_path / "gpu-check.json").read_text())
    assert {name: step["status"] for name, step in state["steps"].items()} == {
        "setup": "not run", "probe": "not run", "tests": "not run", "bench-gpu-448": "not run",
        "bench-gpu-mixed": "not run"}
    report = (tmp_path / "gpu.md").read_text()
    assert "| setup | not run | 0 | time budget spent (1.0 s) |" in report
    assert "Result: FAILED: step setup: not run" in report


@pytest.mark.slow
def test_dry_run_exercises_every_step_on_cpu_and_a_rerun_keeps_the_rest(tmp_path):
    # tests: only this file's neighbour of GPU tests, to keep the collection short
    first = run_check("--dry-run", "--out", str(tmp_path), "--steps", "setup,probe,tests,bench-gpu-448",
                      "--test-paths", "tests/training/test_gpu_paths.py")
    assert first.returncode == 0, first.stdout + first.stderr
    state = json.loads((tmp_path / "gpu-check.json").read_text())
    assert state["meta"]["dry_run"] is True and state["meta"]["packages"]["torch"] == torch.__version__
    steps = {name: step["status"] for name, step in state["steps"].items()}
    assert steps == {"setup": "passed", "probe": "passed", "tests": "passed", "bench-gpu-448": "passed",
                     "bench-gpu-mixed": "not selected"}
    tests = {c["name"]: c for c in state["tests"]}
    assert {c["outcome"] for c in tests.values()} == {"skipped"} and len(tests) == 3
    assert all(c["message"] == "needs a CUDA GPU" for c in tests.values())
    dry = state["bench"]["gpu-448"]["summaries"]["mmlora"]
    assert dry["rows"] == 8 and 1000 < dry["est_mib"] < 80_000 and dry["model_tflops_per_step"] > 1

    report = (tmp_path / "gpu.md").read_text()
    for heading in ("**Dry run on CPU**", "## Steps", "## GPU tests (`pytest -m gpu`)",
                    "## Planner estimate against measured peak memory", "## GPU benchmark", "MFU = F / t / P",
                    "### gpu-448 (dry run"):
        assert heading in report, heading
    assert "| test_gpu_paths::test_liger_kernels_give_the_plain_loss_without_logits | skipped |" in report

    # a rerun of one step replaces that step's record and keeps the others'
    second = run_check("--dry-run", "--out", str(tmp_path), "--steps", "probe")
    assert second.returncode == 0, second.stdout + second.stderr
    rerun = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rerun["tests"] == state["tests"] and rerun["bench"] == state["bench"]
    assert rerun["steps"]["tests"] == state["steps"]["tests"] and rerun["steps"]["probe"]["status"] == "passed"


def test_the_planner_is_asked_about_the_largest_batch_of_the_whole_run():
    # The measured peak (torch.cuda.max_memory_allocated) covers the warm-up steps too, so the
    # batch the estimate is made for must be the largest of the run, not of the timed steps.
    from bench.measure import Meter

    meter = Meter(0.0, pad_id=0, visual_id=5, warmup=1, batch_size=2, cuda=False)
    for width, trained in [(100, 60), (10, 4)]:  # the wide batch falls in the warm-up step
        labels = torch.full((2, width), -100)
        labels[0, -trained:] = 1
        meter.on_step_begin(None, None, None)
        meter._count(None, (), {"input_ids": torch.ones(2, width, dtype=torch.long), "labels": labels})
        meter.on_step_end(None, None, None)
    m = meter.finish()
    assert m.widest == (2, 100) and m.most_trained == 60
    assert m.slots == 20 and m.real_tokens == 20 and m.measured_steps == 1  # throughput: timed step only


def test_gpu_run_estimates_divide_per_step_and_use_the_h200_peak(tmp_path, monkeypatch):
    # bench/run.py's `estimates`, which a GPU run calls after training, on CPU: only the GPU's
    # name and matmul rate are stood in for; the model, recipe and planner are the real ones.
    import bench.run as run
    import mmlora.models.memory as memory
    from bench.runners import mmlora_recipe
    from bench.workloads import GPU_448, write_model_dir

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(memory, "measure_matmul_rate", lambda *a: 700e12)
    model_dir = write_model_dir(tmp_path / "model", GPU_448)
    recipe = mmlora_recipe(GPU_448, tmp_path / "train.jsonl", model_dir, tmp_path / "run", packing=False)
    steps, seconds = 35, 14.0
    m = {"widest": (8, 400), "measured_steps": steps, "real_tokens": steps * 2500, "samples": steps * 8,
         "visual_tokens": steps * 2048, "measured_seconds": seconds, "most_trained": 300, "slots": steps * 3200}
    out = run.estimates(recipe, m, "sdpa")

    model, family = memory.meta_lora_model(recipe, torch.bfloat16)
    per_step = memory.training_flops(model, family, 2500, 2500 / 8, 4 * 2048)
    assert out["model_flops_per_step"] == pytest.approx(per_step)
    assert out["mfu"] == pytest.approx(per_step / (seconds / steps) / 989e12)
    assert 0.01 < out["mfu"] < 1  # 2B model, 2.5k tokens per 0.4 s step on an H200: a plausible share
    planned = memory.estimate_memory(recipe, batch_size=8, seq_len=400, visual_tokens=256, model=model,
                                     dtype=torch.bfloat16, attn_implementation="sdpa", trained_tokens=300)
    assert out["estimated_peak_memory"] == planned.total
    assert out["estimated_step_ms"] == pytest.approx(
        1000 * memory.training_flops(model, family, 3200, 400, 4 * 2048) / 700e12)


def test_gpu_tables_from_measurements_to_the_report():
    # run.py's medians and GPU table (MFU %, estimates), then gpu.md's planner check from them
    from bench.run import summarize, table
    from bench.workloads import GPU_448

    def measurement(seconds, peak_gib, mfu_share, est_gib):
        return {"real_tokens": 70_000, "samples": 280, "measured_seconds": seconds, "measured_cpu_seconds": seconds,
                "slots": 100_000, "peak_memory": peak_gib * 2**30, "time_to_first_step": 20.0, "step_ms": [400.0],
                "data_wait_ms": [5.0], "mfu": mfu_share, "estimated_peak_memory": est_gib and est_gib * 2**30,
                "estimated_step_ms": est_gib and 120.0}

    summaries = {"baseline": summarize([measurement(20.0, 30, 0.20, None), measurement(22.0, 30, 0.18, None)]),
                 "mmlora": summarize([measurement(10.0, 20, 0.40, 21), measurement(10.0, 20, 0.40, 21)])}
    assert summaries["mmlora"]["tokens_per_s"] == 7000 and summaries["baseline"]["tokens_per_s"] == pytest.approx((3500 + 70_000 / 22) / 2)
    lines = table(GPU_448, summaries, gpu=True).splitlines()
    head = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert head[-3:] == ["MFU (%)", "est. peak (MiB)", "est. step (ms)"] and lines[3].count("|") == len(head) + 1
    base = dict(zip(head, (c.strip() for c in lines[4].split("|")[1:-1])))
    ours = dict(zip(head, (c.strip() for c in lines[5].split("|")[1:-1])))
    assert base["MFU (%)"] == "19.0" and base["est. peak (MiB)"] == "n/a"
    assert ours["MFU (%)"] == "40.0" and ours["est. peak (MiB)"] == "21504" and ours["peak memory (MiB)"] == "20480"
    cells = [c.strip() for c in lines[5].split("|")[1:-1]]
    assert cells[head.index("tokens/s")] == "7000" and cells[head.index("tokens/s") + 1] == "2.10"  # its "x base"
    checks = planner_checks({"gpu-448": summaries})
    assert [(c.config, c.within) for c in checks] == [("mmlora", True)] and checks[0].gap == pytest.approx(0.05)
