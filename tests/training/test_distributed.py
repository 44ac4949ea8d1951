"""Multi-process training through `accelerate launch` (2 CPU processes, gloo)."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmlora.config.paths import recipes_dir
from mmlora.errors import MmloraError
from mmlora.training.checkpoint_check import checkpoint_problem
from mmlora.training.preflight import check_fsdp_device

STEPS = 4


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
    if kind == "FSDP":  # FSDP2: per-parameter sharding, also on CPU processes (mmlora/training/fsdp.py)
        assert config["fsdp_config"]["fsdp_version"] == 2


COMMON = ["tiny_vqa", f"train.max_steps={STEPS}", "train.logging_steps=1", "train.eval_strategy=never",
          "eval.generate_at_end=false"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run (global batch 8) both 2-process runs are held against, trained once,
    through the CLI's entry point in this process (torch is imported already); returns its
    output folder and what it printed."""
    from mmlora.cli import main

    out = tmp_path_factory.mktemp("single") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", *COMMON, "train.batch_size=8", "train.save_steps=0", f"train.output_dir={out}"])
    assert code == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path, single):
    single, one = single
    double = tmp_path / "double"
    # torchrun, not `accelerate launch --cpu --num_processes 2`: in accelerate 1.15 the latter
    # starts a single process on a CPU-only machine. torchrun drives the same Trainer/accelerate
    # code path (gloo DDP), which is what runs under `accelerate launch` on GPUs.
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora",
         "train", *COMMON, "train.batch_size=4", "train.save_steps=0", f"train.output_dir={double}"],
        capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-6000:]
    # same global batch (2 x 4 = 8): the loss curves agree up to reduction order and
    # per-rank token normalisation
    a, b = losses(single), losses(double)
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=0.03)
    # rank 0 alone prints and writes
    for marker in ("saved adapter", "component", "train data:"):
        assert two.stdout.count(marker) == one.count(marker) >= 1, marker
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
    assert {key: env[key] for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD",
                                      "FSDP_AUTO_WRAP_POLICY", "FSDP_STATE_DICT_TYPE",
                                      "FSDP_CPU_RAM_EFFICIENT_LOADING")} == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    # 16 processes on 2 machines: 8 per node, this one node 1, meeting at node 0's address
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("2", 1, "8")
    assert (torchrun.rdzv_backend, torchrun.rdzv_endpoint) == ("static", "10.0.0.1:29500")
    assert (torchrun.module, torchrun.training_script, torchrun.training_script_args) == (True, "mmlora",
                                                                                        ["train", "my_vqa.yaml"])


def fsdp_launch(*args: str) -> subprocess.CompletedProcess:
    """The shipped FSDP config on 2 gloo CPU processes: the environment `accelerate launch
    --config_file recipes/accelerate/fsdp.yaml --mixed_precision no` gives each process (fp32, to
    compare with a one-process run), started with torchrun (see the DDP test for why)."""
    env, _ = launch_arguments(["--config_file", str(recipes_dir() / "accelerate" / "fsdp.yaml"),
                               "--mixed_precision", "no", "-m", "mmlora", "train", "tiny_vqa"])
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora",
                           "train", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def assert_same_tensors(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.mark.slow
def test_fsdp_config_shards_two_cpu_processes_and_matches_one_process(tmp_path, single):
    """The shipped FSDP2 config on 2 gloo CPU processes really shards (each rank holds half of
    every weight), trains as one process does on the same global batch (fp32), writes a plain
    PEFT adapter that merge loads, and resumes from its checkpoint to the same end. ~150 s."""
    common = COMMON
    (single, _), sharded, resumed = single, tmp_path / "fsdp", tmp_path / "resumed"
    two = fsdp_launch(*common, "train.batch_size=4", "train.save_steps=2", f"train.output_dir={sharded}")
    assert two.returncode == 0, two.stderr[-6000:]
    # sharded, not DDP: every weight is a DTensor split over the 2 ranks, rank 0 holds half the values
    shard_line = [line for line in two.stdout.splitlines() if line.startswith("FSDP2: ")]
    assert len(shard_line) == 1, two.stdout[-3000:]
    tensors, total = (int(n) for n in re.match(r"FSDP2: (\d+) of (\d+) weight tensors sharded over 2 processes",
                                               shard_line[0]).groups())
    assert tensors == total > 0
    held, full = (int(n.replace(",", "")) for n in re.search(r"holds ([\d,]+) of ([\d,]+) values", shard_line[0]).groups())
    assert abs(held - full / 2) <= 0.01 * full
    # the same run: per-step losses and the adapter, up to float reduction order
    assert losses(sharded) == pytest.approx(losses(single), rel=1e-5, abs=0)
    assert_same_tensors(adapter(sharded), adapter(single), atol=1e-5)
    assert sorted(p.name for p in sharded.iterdir() if p.is_file()) == sorted(
        p.name for p in single.iterdir() if p.is_file())
    # the checkpoint: a plain adapter next to accelerate's FULL_STATE_DICT files (weights-only loadable)
    checkpoint = sharded / "checkpoint-2"
    assert {"adapter_model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in checkpoint.iterdir()}
    assert checkpoint_problem(checkpoint, world_size=2) is None
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    (damaged / "optimizer.bin").write_bytes((checkpoint / "optimizer.bin").read_bytes()[:100])
    assert checkpoint_problem(damaged, world_size=2).startswith("optimizer.bin is damaged")
    # resume from step 2 (under FSDP): steps 3-4 and the final adapter as in the uninterrupted run
    shutil.copytree(sharded, resumed, ignore=shutil.ignore_patterns("checkpoint-4"))
    again = fsdp_launch(*common, "train.batch_size=4", "train.save_steps=2", f"train.output_dir={resumed}",
                        "--resume", "latest")
    assert again.returncode == 0, again.stderr[-6000:]
    assert re.search(r"^step 3/4 ", again.stdout, re.M) and not re.search(r"^step 2/4 ", again.stdout, re.M)
    assert losses(resumed) == pytest.approx(losses(sharded), rel=1e-6, abs=0)
    assert_same_tensors(adapter(resumed), adapter(sharded), atol=1e-6)
    # merge loads the FSDP adapter as it loads the one-process one
    from mmlora.cli import main

    for name, run in (("single", single), ("fsdp", sharded)):
        assert main(["merge", "--adapter", str(run), "--out", str(tmp_path / f"merged_{name}")]) == 0
    from safetensors.torch import load_file

    merged = [load_file(tmp_path / f"merged_{name}" / "model.safetensors") for name in ("single", "fsdp")]
    assert_same_tensors(*merged, atol=1e-5)


def test_fsdp1_config_without_gpu_is_refused_in_one_line(monkeypatch):
    """FSDP1 cannot shard CPU processes (sync_module_states needs a GPU); rather than run
    unsharded, `mmlora train` refuses before loading anything. FSDP2 passes."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: FSDP1 runs there")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(MmloraError) as refused:
        check_fsdp_device()
    assert str(refused.value) == ("The FSDP config asks for fsdp_version: 1, which needs GPUs, and none is visible. "
                                  "On CPU processes use fsdp_version: 2 (recipes/accelerate/fsdp.yaml).")
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp_device()


def test_two_activation_checkpointings_are_refused_in_one_line(monkeypatch, tmp_path, capsys):
    """train.gradient_checkpointing with the accelerate config's fsdp_activation_checkpointing:
    the HF Trainer would raise a ValueError once the model is loaded; `mmlora train` refuses the
    pair before reading data or weights, naming both and the one to turn off."""
    from mmlora.cli import main
    from mmlora.config.loading import load_recipe
    from mmlora.training.preflight import check_activation_checkpointing

    config = str(recipes_dir() / "accelerate" / "fsdp.yaml")
    shipped, _ = launch_arguments(["--config_file", config, "-m", "mmlora", "train", "tiny_vqa"])
    both, _ = launch_arguments(["--config_file", config, "--fsdp_activation_checkpointing", "true",
                                "-m", "mmlora", "train", "tiny_vqa"])
    for key, value in shipped.items():
        monkeypatch.setenv(key, value)
    check_activation_checkpointing(load_recipe("tiny_vqa", ["train.gradient_checkpointing=true"]))  # the shipped config
    for key, value in both.items():
        monkeypatch.setenv(key, value)
    check_activation_checkpointing(load_recipe("tiny_vqa", ["train.gradient_checkpointing=false"]))  # FSDP's alone
    out = tmp_path / "run"
    assert main(["train", "tiny_vqa", "train.gradient_checkpointing=true", f"train.output_dir={out}"]) == 2
    assert capsys.readouterr().err == (
        "mmlora: error: train.gradient_checkpointing=true and the accelerate config's fsdp_activation_checkpointing: "
        "true both checkpoint activations, and the two cannot be combined: set fsdp_activation_checkpointing: false "
        "in the accelerate config (as recipes/accelerate/fsdp.yaml does), or set train.gradient_checkpointing=false "
        "to let FSDP checkpoint instead.\n")
    assert not out.exists()  # refused before the pre-scan wrote anything


@pytest.mark.slow
def test_streamed_two_process_training_matches_one_process(tmp_path):
    """data.streaming under 2 gloo processes: each rank keeps its share of every global batch
    (dispatch off), so the loss curve is the one-process curve at the same global batch."""
    common = ["tiny_vqa", "data.streaming=true", "train.max_steps=3", "train.logging_steps=1", "train.save_steps=0",
              "train.eval_strategy=never", "eval.generate_at_end=false"]
    from mmlora.cli import main

    # the one-process run in this process, through the CLI's entry point (torch is imported already)
    assert main(["train", *common, "train.batch_size=4", f"train.output_dir={tmp_path / 'single'}"]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora",
                          "train", *common, "train.batch_size=2", f"train.output_dir={tmp_path / 'double'}"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-6000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "double")
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=0.03)
