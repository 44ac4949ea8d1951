"""`make gpu-check`: mmlora's GPU paths on one CUDA GPU, in one command, under a time budget.

    python3 bench/gpu_check.py                  # machine with a package registry: makes .venv-gpu
    python3 bench/gpu_check.py --wheels .whl    # offline machine with CUDA torch: carried wheels
    python3 bench/gpu_check.py --python PY      # an environment you prepared: installs nothing
    python3 bench/gpu_check.py --dry-run        # every step on CPU, nothing installed (CI-safe)
    python3 bench/gpu_check.py --steps tests    # rerun some steps, keep the others' results

Steps, each with its own timeout inside one overall budget (--budget, default 480 s):
  setup   the environment (below); probe: torch, CUDA, the GPU and package versions;
  tests   `pytest -m gpu` (QLoRA 4/8-bit, packed flash-attention losses against unpacked SDPA,
          Liger), JUnit XML read back test by test;
  bench-gpu-448, bench-gpu-mixed   `bench/run.py --workload gpu --only NAME` (baseline, mmlora
          and mmlora-packed in the same run: tokens/s, MFU, peak memory, planner estimate).
After every step it writes OUT/gpu.md (bench/gpu_report.py) and OUT/gpu-check.json (the state a
rerun with --steps starts from), so a run cut short still says what ran and what did not. Exit
status 1 only on real failures: a failed step, test or timeout, or a planner estimate more than
15% off the measured peak; a package without a binary wheel (flash-attn) is a skip, said so.

Environments. Default: a fresh venv .venv-gpu with torch==2.13.0 from PyPI (on Linux x86_64 that
is the CUDA 13.0 build, 2.13.0+cu130; --torch-index picks another, e.g.
https://download.pytorch.org/whl/cu128 for drivers older than 580), requirements.lock,
bitsandbytes, and liger-kernel and flash-attn only where a binary wheel installs
(`--only-binary :all:`, never compiled). --wheels DIR: for a machine that reaches no registry but
has a CUDA torch: a venv over that interpreter's packages (its torch stays) with the wheels of
bench/gpu_wheels.txt on top (`--fetch-wheels DIR` downloads them where pip works).
This driver uses the standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu_report import failures, parse_junit, render  # noqa: E402

GPU_WORKLOADS = ["gpu-448", "gpu-mixed"]  # bench/workloads.py WORKLOADS["gpu"]
STEPS = ["setup", "probe", "tests", *(f"bench-{name}" for name in GPU_WORKLOADS)]
STEP_TIMEOUT = {"probe": 60, "tests": 200, "bench-gpu-448": 200, "bench-gpu-mixed": 200}
"""Seconds each step may take at most; the overall budget cuts them shorter when it runs low."""
MIN_STEP_SECONDS = 20
"""A step is not started with less budget than this left: it is reported as not run."""
TORCH = "torch==2.13.0"  # requirements.lock
GPU_PACKAGES = ["bitsandbytes==0.50.2"]
"""Needed by the QLoRA test: a failed install fails the setup."""
OPTIONAL_BINARY = ["liger-kernel==0.8.5", "flash-attn"]
"""Installed only from a binary wheel (no compiling in a timed check); absent means skipped tests."""
REPORTED = ["torch", "transformers", "tokenizers", "huggingface_hub", "peft", "accelerate", "bitsandbytes",
            "liger_kernel", "flash_attn", "triton", "pytest"]
WHEELS_LIST = ROOT / "bench" / "gpu_wheels.txt"

PROBE = """
import importlib.metadata as md, json, torch
def version(name):
    for dist in (name, name.replace("_", "-")):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            pass
    return None
cuda = torch.cuda.is_available()
print(json.dumps({"torch_cuda": torch.version.cuda, "cuda_available": cuda,
                  "gpu": torch.cuda.get_device_name() if cuda else None,
                  "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
                  "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
                  "packages": {name: version(name) for name in NAMES}}))
"""


class Check:
    """The run's state (steps, tests, bench results, machine), saved after every step."""

    def __init__(self, args):
        self.args = args
        self.out: Path = args.out
        self.logs = args.out / "gpu-check-logs"
        self.state_path = self.out / "gpu-check.json"
        # scratch (JUnit XML, run.py's JSON): its content goes into the state, so OUT holds only
        # gpu.md, gpu-check.json and one log per step (a device's $OUT returns at most 8 files)
        self.scratch = Path(tempfile.mkdtemp(prefix="mmlora-gpu-check-"))
        self.deadline = time.monotonic() + args.budget
        self.state = self._load_state()
        self.python = Path(args.python) if args.python else Path(sys.executable if args.dry_run else ROOT / args.venv / "bin" / "python")

    def _load_state(self) -> dict:
        fresh = {"meta": {}, "tests": [], "bench": {},
                 "steps": {name: {"status": "not run" if name in self.args.steps else "not selected",
                                  "seconds": 0, "note": "not reached" if name in self.args.steps else ""}
                           for name in STEPS}}
        if self.args.steps == STEPS or not self.state_path.is_file():
            return fresh
        old = json.loads(self.state_path.read_text())
        if old.get("meta", {}).get("dry_run") != self.args.dry_run:
            return fresh  # never mix a dry run's results with a GPU run's
        for name in self.args.steps:  # the steps rerun now start over; the others keep their results
            old["steps"][name] = fresh["steps"][name]
            old["steps"][name]["note"] = "not reached in the rerun"
            if name == "tests":
                old["tests"] = []
            if name.startswith("bench-"):
                old["bench"].pop(name.removeprefix("bench-"), None)
        return old

    def save(self) -> None:
        meta = self.state["meta"]
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=1))
        (self.out / "gpu.md").write_text(render(self.state))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], timeout: float) -> tuple[str, str]:
        """Run one command of a step in its own process group, killed whole at its timeout;
        returns (status, last lines of its output) and keeps the full output in the logs."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("a") as handle:
            handle.write(f"$ {shlex.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                       start_new_session=True)
            try:
                code = process.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the pytest / bench children too
                process.wait()
                code = None
        tail = "\n".join(log.read_text().splitlines()[-15:])
        return ("timeout" if code is None else "passed" if code == 0 else f"exit {code}"), tail

    def step(self, name: str, body) -> bool:
        """Run a step's body inside its share of the budget; record status, seconds and note."""
        if name not in self.args.steps:
            return True
        timeout = min(self.args.setup_timeout if name == "setup" else STEP_TIMEOUT[name], self.left())
        record = self.state["steps"][name]
        if timeout < MIN_STEP_SECONDS:
            record.update(status="not run", seconds=0, note=f"time budget spent ({self.args.budget} s)")
            self.save()
            return False
        print(f"[gpu-check] {name} (at most {timeout:.0f} s)", flush=True)
        (self.logs / f"{name}.log").unlink(missing_ok=True)  # this run's output only
        start = time.monotonic()
        status, note = body(start + timeout)
        record.update(status=status, seconds=time.monotonic() - start, note=note)
        print(f"[gpu-check] {name}: {status} {note}", flush=True)
        self.save()
        return status == "passed"

    @staticmethod
    def remaining(deadline: float) -> float:
        return deadline - time.monotonic()

    # ---- the steps -------------------------------------------------------------------------

    def setup(self, deadline: float) -> tuple[str, str]:
        args = self.args
        if args.dry_run:
            return "passed", f"dry run: nothing installed; steps run with {self.python}"
        if args.python:
            return "passed", f"given environment {self.python}; nothing installed"
        venv = ROOT / args.venv
        stamp = venv / ".gpu-check-installed"
        wanted = f"wheels {sorted(p.name for p in Path(args.wheels).glob('*.whl'))}" if args.wheels else \
            f"{TORCH} {args.torch_index or 'PyPI'} {(ROOT / 'requirements.lock').read_text()}"
        if stamp.is_file() and stamp.read_text() == wanted:
            return "passed", f"{venv.name} already installed (delete it to reinstall)"
        base = args.base_python
        # Offline, the venv gets no pip or setuptools of its own: the base's (reached through the
        # .pth below) are newer than the ones ensurepip bundles, which would shadow them.
        make = [base, "-m", "venv", "--clear", *(["--without-pip"] if args.wheels else []), str(venv)]
        status, tail = self.run("setup", make, self.remaining(deadline))
        if status != "passed":
            return "failed", f"venv: {status}: {tail[-300:]}"
        pip = [str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        notes = []
        if args.wheels:
            # The base interpreter's packages (its CUDA torch) behind the venv's own: wheels win.
            site = subprocess.run([base, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib']); "
                                   "print(sysconfig.get_paths()['platlib'])"], capture_output=True, text=True, check=True)
            ours = Path(subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       capture_output=True, text=True, check=True).stdout.strip())
            (ours / "_gpu_check_base.pth").write_text("\n".join(dict.fromkeys(site.stdout.split())) + "\n")
            wheels = sorted(str(p) for p in Path(args.wheels).glob("*.whl"))
            commands = [pip + ["--no-index", "--no-deps", *wheels]]
            notes.append(f"base {base} with {len(wheels)} carried wheels")
        else:
            # --isolated: pip's config and PIP_* variables can name a local folder of CPU wheels
            # (find-links), whose torch-2.13.0+cpu would win over PyPI's 2.13.0 (local versions
            # sort higher). The probe step fails a CPU build anyway.
            torch_spec = pip + ["--isolated", TORCH] + (["--index-url", args.torch_index] if args.torch_index else [])
            commands = [torch_spec, pip + ["-r", "requirements.lock"], pip + GPU_PACKAGES]
        commands.append(pip + ["--no-deps", "--no-build-isolation", "--no-index", "-e", "."])
        for command in commands:
            status, tail = self.run("setup", command, self.remaining(deadline))
            if status != "passed":
                return ("timeout" if status == "timeout" else "failed"), f"{shlex.join(command[3:])}: {status}: {tail[-400:]}"
        for package in [] if args.wheels else OPTIONAL_BINARY:
            left = self.remaining(deadline)
            status, _ = self.run("setup", pip + ["--only-binary", ":all:", package], left) if left > 5 else ("timeout", "")
            notes.append(f"{package}: {'installed' if status == 'passed' else 'no binary wheel, continuing without'}")
        stamp.write_text(wanted)
        return "passed", "; ".join(notes)

    def probe(self, deadline: float) -> tuple[str, str]:
        code = PROBE.replace("NAMES", repr(REPORTED))
        try:
            found = subprocess.run([str(self.python), "-c", code], cwd=ROOT, capture_output=True, text=True,
                                   timeout=self.remaining(deadline))
        except subprocess.TimeoutExpired:
            return "timeout", "torch import did not finish"
        if found.returncode != 0:
            return "failed", found.stderr.strip().splitlines()[-1] if found.stderr.strip() else "no output"
        info = json.loads(found.stdout.strip().splitlines()[-1])
        meta = self.state["meta"]
        meta["packages"] = info.pop("packages")
        meta["gpu"] = info
        meta["machine"] = machine(info)
        if self.args.dry_run:
            return "passed", f"torch {meta['packages']['torch']}, no GPU used (dry run)"
        if not info["torch_cuda"]:
            return "failed", (f"torch {meta['packages']['torch']} is a CPU build: give --torch-index "
                              "https://download.pytorch.org/whl/cu130 (or cu128 for older drivers)")
        if not info["cuda_available"]:
            return "failed", f"torch {meta['packages']['torch']} sees no CUDA device: the GPU steps cannot run"
        return "passed", f"{info['gpu']}, torch {meta['packages']['torch']}"

    def tests(self, deadline: float) -> tuple[str, str]:
        junit = self.scratch / "gpu-tests.xml"
        command = [str(self.python), "-m", "pytest", "-m", "gpu", "-rA", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *self.args.test_paths]
        status, tail = self.run("tests", command, self.remaining(deadline))
        cases = parse_junit(junit) if junit.is_file() else []
        self.state["tests"] = cases
        counts = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
        summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no test collected"
        if status == "timeout":
            return "timeout", summary
        if not cases:  # pytest exit 5 (nothing collected) or a collection error
            return "failed", f"{status}: {tail[-300:]}"
        return ("passed" if status == "passed" else "failed"), summary  # failed cases: in the tests table

    def bench(self, workload: str, deadline: float) -> tuple[str, str]:
        result = self.scratch / f"bench-{workload}.json"
        command = [str(self.python), "bench/run.py", "--workload", "gpu", "--only", workload,
                   "--rounds", str(self.args.rounds), "--out", str(self.scratch), "--json", str(result)]
        status, tail = self.run(f"bench-{workload}", command + (["--dry-run"] if self.args.dry_run else []),
                                self.remaining(deadline))
        if status != "passed" or not result.is_file():
            return ("timeout" if status == "timeout" else "failed"), f"{status}: {tail[-400:]}"
        found = json.loads(result.read_text())
        self.state["bench"][workload] = {"markdown": found["sections"][workload],
                                         "summaries": found["summaries"][workload]}
        summaries = found["summaries"][workload]
        if self.args.dry_run:
            return "passed", f"dry run: planner estimate {summaries['mmlora']['est_mib']:.0f} MiB for one batch"
        base = summaries["baseline"]["tokens_per_s"]
        return "passed", "; ".join(f"{c} {s['tokens_per_s'] / base:.2f}x tokens/s" for c, s in summaries.items())


def machine(info: dict) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    gpu = (f"{info['gpu']} (compute capability {info['capability']}, {info['gpu_memory_gib']} GiB), CUDA "
           f"{info['torch_cuda']}" if info["gpu"] else "no GPU")
    return f"{gpu}; {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}"


def fetch_wheels(target: Path) -> int:
    """Download bench/gpu_wheels.txt's wheels for the offline GPU machine (Python 3.12, x86-64)."""
    specs = [line.split("#")[0].strip() for line in WHEELS_LIST.read_text().splitlines()]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)], "-d", str(target),
               *[s for s in specs if s]]
    code = subprocess.run(command).returncode
    size = sum(p.stat().st_size for p in target.glob("*.whl"))
    print(f"[gpu-check] {target}: {len(list(target.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run every step on CPU, install nothing")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    parser.add_argument("--setup-timeout", type=float, default=240, help="seconds for the setup step (default "
                        "240; a first online install of CUDA torch may need more: run --steps setup alone)")
    parser.add_argument("--rounds", type=int, default=1, help="benchmark rounds per configuration (default 1)")
    parser.add_argument("--out", type=Path, help="where gpu.md goes (default bench/results; for a dry run "
                        "bench/results/dry-run, which git ignores: a dry run never replaces GPU results)")
    parser.add_argument("--venv", default=".venv-gpu", help="the environment the check makes (default .venv-gpu)")
    parser.add_argument("--python", help="use this interpreter's environment as it is (installs nothing)")
    parser.add_argument("--base-python", default="python3", help="interpreter the venv is made from")
    parser.add_argument("--wheels", help="offline: install these wheels over --base-python's packages")
    parser.add_argument("--torch-index", help="pip index of the CUDA torch (default PyPI: 2.13.0+cu130)")
    parser.add_argument("--test-paths", nargs="+", default=["tests"], help=argparse.SUPPRESS)
    parser.add_argument("--fetch-wheels", type=Path, metavar="DIR", help="download the offline wheels and exit")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels)
    args.out = args.out or ROOT / "bench" / "results" / ("dry-run" if args.dry_run else "")
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; steps are {STEPS}")
    args.steps = [s for s in STEPS if s in args.steps]
    if args.wheels and not list(Path(args.wheels).glob("*.whl")):
        parser.error(f"--wheels {args.wheels}: no .whl files there (python3 bench/gpu_check.py --fetch-wheels DIR)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a dry run never touches a GPU, even where there is one

    check = Check(args)
    check.state["meta"].update(
        dry_run=args.dry_run, budget_s=args.budget,
        command="python3 bench/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
    check.state["meta"].setdefault("machine", "not probed")
    check.save()
    ready = check.step("setup", check.setup)
    ready = (check.step("probe", check.probe) if ready else False) and ready
    for name in STEPS[2:]:
        if not ready and name in args.steps:
            check.state["steps"][name].update(status="not run", note="an earlier step (setup, probe) did not pass")
            continue
        if name == "tests":
            check.step(name, check.tests)
        else:
            check.step(name, lambda deadline, w=name.removeprefix("bench-"): check.bench(w, deadline))
    check.save()
    shutil.rmtree(check.scratch, ignore_errors=True)
    problems = failures(check.state)
    print(f"[gpu-check] wrote {check.out / 'gpu.md'}: {'FAILED: ' + '; '.join(problems) if problems else 'no failures'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
