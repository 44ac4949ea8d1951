"""The parts of the GPU check that need no GPU: MFU, the planner's estimate against the measured
peak, the pytest JUnit results, and the markdown of bench/results/gpu.md.

bench/gpu_check.py runs the steps and keeps what each one found in a JSON state (kept next to
the markdown, so a rerun of a single step keeps the others' results); `render` turns that state
into the report. Standard library only: the check's driver imports this before any venv exists.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
"""Dense bf16 tensor-core peak FLOP/s by GPU name (datasheets, without sparsity), for MFU."""

PLANNER_TOLERANCE = 0.15
"""The planner's peak-memory estimate must be within 15% of the measured peak (issue #17)."""

MFU_FORMULA = (
    "MFU = F / t / P. F: model FLOPs of one training step, `mmlora.models.memory.training_flops` over the "
    "step's non-padding tokens T with mean sample length L: 4·T per frozen weight of the language "
    "model's linear layers (forward, and backward to the inputs), 6·T per LoRA weight (plus its "
    "weight gradient), 4·T per lm_head weight, causal attention 3 × 2·T·L·(heads × head_dim) per "
    "layer, and 2 per vision-tower linear weight and image patch (frozen: forward only). t: wall "
    "seconds per timed step, data waits included. P: the GPU's dense bf16 peak "
    "(H100/H200 989 TFLOP/s, A100 312, L40S 362, A10 125). The same F serves every configuration, so "
    "padding, the baseline's vision backward and full logits count as waste, not as work."
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its `torch.cuda.get_device_name()`, None if unknown."""
    return next((value for key, value in PEAK_BF16_FLOPS.items() if key in device_name), None)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: the model FLOPs a step needs over what the GPU could have done
    in the step's wall time (MFU_FORMULA); None where the GPU's peak is not known."""
    if not peak_flops or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak_flops


@dataclass(frozen=True)
class PlannerCheck:
    """The planner's peak-memory estimate next to the peak one benchmark configuration measured."""

    workload: str
    config: str
    measured_mib: float
    estimated_mib: float

    @property
    def gap(self) -> float:
        """(estimate - measured) / measured: positive when the planner over-estimates."""
        return (self.estimated_mib - self.measured_mib) / self.measured_mib

    @property
    def within(self) -> bool:
        return abs(self.gap) <= PLANNER_TOLERANCE


def planner_checks(bench: dict) -> list[PlannerCheck]:
    """One check per configuration that has both a measured peak and an estimate (mmlora's runs;
    the baseline has no recipe to plan), from run.py's JSON: {workload: {config: summary}}."""
    checks = []
    for workload, configs in bench.items():
        for config, summary in configs.items():
            if summary.get("est_mib") and summary.get("peak_mib"):
                checks.append(PlannerCheck(workload, config, summary["peak_mib"], summary["est_mib"]))
    return checks


def parse_junit(path: Path) -> list[dict]:
    """The test cases of a pytest `--junitxml` file: name, outcome (passed, failed, error or
    skipped), seconds and, where not passed, the first line of the reason."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (found.get("message") or found.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        cases.append({"name": name, "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": message})
    return cases


def failures(state: dict) -> list[str]:
    """What makes the check fail: a step that failed, ran out of time or was asked for but not
    run (budget spent, setup failed), a failed GPU test, a planner estimate outside the
    tolerance. Skipped tests (a package without a wheel) and steps not selected are not."""
    found = [f"step {name}: {step['status']}" for name, step in state.get("steps", {}).items()
             if step["status"] in ("failed", "timeout", "not run")]
    found += [f"test {case['name']}: {case['outcome']}" for case in state.get("tests", [])
              if case["outcome"] in ("failed", "error")]
    found += [f"planner {c.workload}/{c.config}: {100 * c.gap:+.1f}%"
              for c in planner_checks(_summaries(state)) if not c.within]
    return found


def _summaries(state: dict) -> dict:
    return {name: b.get("summaries", {}) for name, b in state.get("bench", {}).items()}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(state: dict) -> str:
    """bench/results/gpu.md from the check's state (see bench/gpu_check.py for its keys)."""
    meta = state.get("meta", {})
    dry = meta.get("dry_run", False)
    lines = ["# GPU check: mmlora's GPU tests and the GPU benchmark", ""]
    if dry:
        lines += ["**Dry run on CPU**: every step of the check ran without CUDA packages or a GPU; "
                  "nothing below is a GPU measurement.", ""]
    lines += [f"Command: `{meta.get('command', '')}`; started {meta.get('started', '?')}, "
              f"finished {meta.get('finished', '?')}, time budget {meta.get('budget_s', '?')} s.", "",
              f"Machine: {meta.get('machine', 'unknown')}.", ""]
    packages = meta.get("packages", {})
    if packages:
        lines += ["| package | version |", "|---|---|"]
        lines += [f"| {name} | {_cell(version or 'absent')} |" for name, version in packages.items()]
        lines.append("")
    lines += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for name, step in state.get("steps", {}).items():
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', 0):.0f} | {_cell(step.get('note', ''))} |")
    problems = failures(state)
    lines += ["", f"Result: {'FAILED: ' + '; '.join(problems) if problems else 'no failures'}.", ""]

    tests = state.get("tests", [])
    lines += ["## GPU tests (`pytest -m gpu`)", ""]
    if tests:
        lines += ["| test | outcome | seconds | reason |", "|---|---|---|---|"]
        lines += [f"| {_cell(c['name'])} | {c['outcome']} | {c['seconds']:.1f} | {_cell(c['message'])} |"
                  for c in tests]
    else:
        lines.append("Not run.")
    lines.append("")

    lines += ["## Planner estimate against measured peak memory", ""]
    checks = planner_checks(_summaries(state))
    if checks:
        lines += [f"Acceptance: |estimate - measured| / measured <= {PLANNER_TOLERANCE:.0%}.", "",
                  "| workload | configuration | measured peak (MiB) | estimate (MiB) | gap | within |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c.workload} | {c.config} | {c.measured_mib:.0f} | {c.estimated_mib:.0f} | {100 * c.gap:+.1f}% "
                  f"| {'yes' if c.within else 'NO'} |" for c in checks]
    else:
        lines.append("No measured peak to compare (the benchmark did not run on a GPU).")
    lines += ["", "## GPU benchmark (`bench/run.py --workload gpu`)", "", MFU_FORMULA, ""]
    bench = state.get("bench", {})
    if bench:
        for name, result in bench.items():
            lines += [result.get("markdown", f"### {name}\n\nNo table."), ""]
    else:
        lines += ["Not run.", ""]
    return "\n".join(lines)
