"""Multi-process training through `accelerate launch` (2 CPU processes, gloo)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmlora.config.paths import recipes_dir

STEPS = 6


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"),
                                       ("zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_shipped_accelerate_configs(name, kind):
    config = yaml.safe_load((recipes_dir() / "accelerate" / f"{name}.yaml").read_text())
    assert config["distributed_type"] == kind
    if name.startswith("zero"):
        assert config["deepspeed_config"]["zero_stage"] == int(name[-1])
    if kind == "FSDP":
        assert config["fsdp_config"]["fsdp_use_orig_params"] is True


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    common = ["tiny_vqa", f"train.max_steps={STEPS}", "train.logging_steps=1", "train.save_steps=0",
              "train.eval_strategy=never", "eval.generate_at_end=false"]
    single = tmp_path / "single"
    one = subprocess.run([sys.executable, "-m", "mmlora", "train", *common, "train.batch_size=8",
                          f"train.output_dir={single}"], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    double = tmp_path / "double"
    # torchrun, not `accelerate launch --cpu --num_processes 2`: in accelerate 1.15 the latter
    # starts a single process on a CPU-only machine. torchrun drives the same Trainer/accelerate
    # code path (gloo DDP), which is what runs under `accelerate launch` on GPUs.
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora",
         "train", *common, "train.batch_size=4", f"train.output_dir={double}"],
        capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # same global batch (2 x 4 = 8): the loss curves agree up to reduction order and
    # per-rank token normalisation
    a, b = losses(single), losses(double)
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=0.03)
    # rank 0 alone prints and writes
    for marker in ("saved adapter", "component", "train data:"):
        assert two.stdout.count(marker) == one.stdout.count(marker) >= 1, marker
    assert (double / "adapter_model.safetensors").is_file()
