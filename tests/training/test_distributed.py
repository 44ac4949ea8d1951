"""Multi-process training through `accelerate launch` (2 CPU processes, gloo)."""

import json
import os
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


def launch_arguments(command: list[str]):
    """accelerate's own `launch` parsing of `command` (the arguments after `accelerate launch`):
    the environment each process gets and the torchrun arguments, as `accelerate launch` makes them."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _filter_args, _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command))
    env = prepare_multi_gpu_env(args)
    torchrun = _filter_args(args, distrib_run.get_args_parser(),
                            ["--training_script", args.training_script, "--training_script_args", args.training_script_args])
    return env, torchrun


def test_documented_multi_node_fsdp_launch():
    """docs/training.md's two-node command with the shipped FSDP config, read by accelerate itself."""
    config = str(recipes_dir() / "accelerate" / "fsdp.yaml")
    env, torchrun = launch_arguments(["--config_file", config, "--num_machines", "2", "--machine_rank", "1",
                                      "--main_process_ip", "10.0.0.1", "--main_process_port", "29500",
                                      "--num_processes", "16", "-m", "mmlora", "train", "my_vqa.yaml"])
    assert {key: env[key] for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_SHARDING_STRATEGY",
                                      "FSDP_AUTO_WRAP_POLICY", "FSDP_USE_ORIG_PARAMS", "FSDP_STATE_DICT_TYPE")} == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_USE_ORIG_PARAMS": "true",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    # 16 processes on 2 machines: 8 per node, this one node 1, meeting at node 0's address
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("2", 1, "8")
    assert (torchrun.rdzv_backend, torchrun.rdzv_endpoint) == ("static", "10.0.0.1:29500")
    assert (torchrun.module, torchrun.training_script, torchrun.training_script_args) == (True, "mmlora",
                                                                                        ["train", "my_vqa.yaml"])


@pytest.mark.slow
def test_fsdp_config_on_two_cpu_processes_is_refused_in_one_line(tmp_path):
    """The shipped FSDP config launched as 2 gloo processes on this CPU machine: accelerate 1.15
    cannot shard there, and each rank says so in one line before any data or weights load."""
    env, _ = launch_arguments(["--config_file", str(recipes_dir() / "accelerate" / "fsdp.yaml"),
                               "-m", "mmlora", "train", "tiny_vqa"])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora", "train", "tiny_vqa",
         "train.max_steps=1", f"train.output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert result.returncode != 0
    assert "mmlora/" not in result.stderr  # no traceback through mmlora's code (torchrun prints its own)
    refusal = ("mmlora: error: The FSDP config (ACCELERATE_USE_FSDP=true) needs GPUs and none is visible: "
               "accelerate runs FSDP on GPU backends only. On CPU launch with recipes/accelerate/ddp.yaml or torchrun.")
    assert result.stderr.count(refusal) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_streamed_two_process_training_matches_one_process(tmp_path):
    """data.streaming under 2 gloo processes: each rank keeps its share of every global batch
    (dispatch off), so the loss curve is the one-process curve at the same global batch."""
    common = ["tiny_vqa", "data.streaming=true", "train.max_steps=3", "train.logging_steps=1", "train.save_steps=0",
              "train.eval_strategy=never", "eval.generate_at_end=false"]
    one = subprocess.run([sys.executable, "-m", "mmlora", "train", *common, "train.batch_size=4",
                          f"train.output_dir={tmp_path / 'single'}"], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora",
                          "train", *common, "train.batch_size=2", f"train.output_dir={tmp_path / 'double'}"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "double")
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=0.03)
