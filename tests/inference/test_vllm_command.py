"""The vLLM server command of `mmlora serve --backend vllm`, from real adapters saved as training
saves them. vLLM cannot be installed on a CPU machine: the flag names and values are checked
against vLLM's source (vllm/engine/arg_utils.py: --enable-lora, --max-lora-rank with
LoRAConfig's MaxLoRARanks choices, --enable-tower-connector-lora, --mm-processor-kwargs;
vllm/entrypoints/openai/cli_args.py: --lora-modules as JSON with name/path/base_model_name,
--chat-template, --served-model-name, --host, --port). The GPU test at the end starts vLLM where
it is installed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from mmlora.cli import main
from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.inference.vllm_command import VLLM_SERVER_MODULE, NotServableByVllm, build_vllm_command, vllm_available
from mmlora.models.loading import load_model_and_processor, save_tiny_model
from mmlora.models.lora import apply_lora, save_adapter

TRAINED = {"min_pixels": 3136, "max_pixels": 12544}
QWEN_SIZE_OPTIONS = {"size": {"shortest_edge": 3136, "longest_edge": 12544}, **TRAINED}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Qwen2-VL folder and adapters on it: language only (r=8), with vision-tower and
    projector LoRA (r=12), and with a fully trained projector; each saved as training saves it."""
    root = tmp_path_factory.mktemp("vllm")
    base = save_tiny_model("tiny/qwen2-vl", root / "base")
    folders = {"base": base}
    for name, lora in [("language", LoraConfig(r=8)), ("vision", LoraConfig(r=12, vision="lora", projector="lora")),
                       ("full_projector", LoraConfig(r=4, projector="full"))]:
        loaded = load_model_and_processor(ModelConfig(name=str(base), **TRAINED), device="cpu")
        model = apply_lora(loaded.model, loaded.processor.family, lora)
        save_adapter(model, root / name)
        loaded.processor.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


def test_language_adapter_is_a_lora_module_of_its_base(saved):
    adapter = saved["language"]
    command = build_vllm_command(None, str(adapter), "my-vqa", "0.0.0.0", 8001)
    argv = command.argv
    assert argv[:3] == [sys.executable, "-m", VLLM_SERVER_MODULE]
    assert option(argv, "--model") == str(saved["base"].resolve())  # the base recorded in the adapter
    assert (option(argv, "--host"), option(argv, "--port")) == ("0.0.0.0", "8001")
    assert "--enable-lora" in argv
    assert json.loads(option(argv, "--lora-modules")) == {
        "name": "my-vqa", "path": str(adapter.resolve()), "base_model_name": str(saved["base"].resolve())}
    assert option(argv, "--max-lora-rank") == "8"
    assert "--enable-tower-connector-lora" not in argv
    assert option(argv, "--chat-template") == str(adapter.resolve() / "chat_template.jinja")
    assert json.loads(option(argv, "--mm-processor-kwargs")) == QWEN_SIZE_OPTIONS
    assert "--served-model-name" not in argv  # the LoRA module's name is the served name


def test_vision_and_projector_lora_turn_on_tower_connector_lora(saved):
    command = build_vllm_command(None, str(saved["vision"]), "v", "127.0.0.1", 8000, max_pixels=50176)
    assert "--enable-tower-connector-lora" in command.argv
    assert option(command.argv, "--max-lora-rank") == "16"  # r=12 -> vLLM's next allowed rank
    assert json.loads(option(command.argv, "--mm-processor-kwargs"))["max_pixels"] == 50176  # a flag wins
    assert any(note.startswith("vLLM: loads as trained only with --enable-tower-connector-lora")
               for note in command.notes), command.notes


def test_adapters_vllm_cannot_apply_as_trained_are_refused_with_the_fix(saved):
    adapter = saved["full_projector"]
    with pytest.raises(NotServableByVllm, match=r"vLLM refuses this adapter: it holds .* not LoRA factors \(fully "
                                                r"trained weights or biases of model\.visual\.merger.*With mmlora: "
                                                r"`mmlora merge --adapter .*`, then `mmlora serve --model DIR`"):
        build_vllm_command(None, str(adapter), "x", "127.0.0.1", 8000)
    with pytest.raises(NotServableByVllm, match="built-in tiny twins, which vLLM cannot load by id"):
        build_vllm_command("tiny/qwen2-vl", None, "x", "127.0.0.1", 8000)


def test_auto_serves_with_transformers_what_vllm_cannot(saved, monkeypatch, capsys):
    from mmlora.inference import vllm_command

    monkeypatch.setattr(vllm_command, "vllm_available", lambda: (True, ""))  # as on a GPU machine with vLLM
    assert main(["serve", "--adapter", str(saved["full_projector"]), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "backend vllm (vLLM is installed and CUDA is visible)" in err
    assert "mmlora serve: backend transformers instead: " in err and "refuses this adapter" in err
    assert main(["serve", "--adapter", str(saved["full_projector"]), "--backend", "vllm", "--dry-run"]) == 2


def test_a_model_folder_is_served_directly_with_its_recorded_bounds(saved, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(saved["base"], merged)
    shutil.copy(saved["language"] / "mmlora.json", merged / "mmlora.json")  # as `mmlora merge` records it
    argv = build_vllm_command(str(merged), None, "merged", "127.0.0.1", 8000).argv
    assert option(argv, "--model") == str(merged) and option(argv, "--served-model-name") == "merged"
    assert "--enable-lora" not in argv and "--lora-modules" not in argv
    assert json.loads(option(argv, "--mm-processor-kwargs")) == QWEN_SIZE_OPTIONS


def test_cli_dry_run_prints_the_command_and_the_backend_choice(saved, capsys):
    assert main(["serve", "--adapter", str(saved["vision"]), "--backend", "vllm", "--port", "9000", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"-m {VLLM_SERVER_MODULE} --model {saved['base'].resolve()}" in out and "--port 9000" in out
    assert "--enable-tower-connector-lora" in out
    assert "mmlora serve: backend vllm (asked for" in err and "--max-lora-rank 16" in err
    assert main(["serve", "--model", str(saved["base"]), "--dry-run"]) == 0
    usable, why_not = vllm_available()
    expected = "backend vllm (vLLM is installed and CUDA is visible)" if usable else f"backend transformers ({why_not})"
    assert expected in capsys.readouterr().err
    assert main(["serve", "--model", str(saved["base"]), "--ui", "--dry-run"]) == 0
    assert "backend transformers (--ui is served by the transformers backend)" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not vllm_available()[0], reason="needs vLLM and a CUDA GPU")
def test_vllm_serves_the_adapter_with_tower_connector_lora(saved, tmp_path):
    """`mmlora serve --backend vllm` starts vLLM's OpenAI server; the adapter (LoRA on the vision
    tower and projector too) answers by name, and vLLM does not log that it dropped modules. The
    tiny twin is the only model on an offline GPU machine; vLLM must take its small shapes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "vllm.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "mmlora", "serve", "--adapter", str(saved["vision"]),
                               "--backend", "vllm", "--port", str(port), "--served-model-name", "tiny-lora"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not start in time"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                    models = [m["id"] for m in json.loads(response.read())["data"]]
                break
            time.sleep(2)
        assert "tiny-lora" in models
        body = {"model": "tiny-lora", "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "Describe the image."}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["role"] == "assistant"
        logged = (tmp_path / "vllm.log").read_text()
        assert "will be ignored" not in logged, logged[-3000:]  # vLLM's warning when it drops tower LoRA
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_vllm_is_used_only_when_importable_and_cuda_is_visible(monkeypatch):
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert vllm_available() == (False, "vLLM is not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real("json") if name == "vllm" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_available() == (False, "no CUDA device is visible")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_available() == (True, "")
