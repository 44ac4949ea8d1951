"""Shipped published checkpoint files (assets/published): they load with the real transformers
classes, agree with each other and with the family descriptions, and let `mmlora plan` count
every real recipe's model offline, with the parameter counts the checkpoints publish."""

import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, GenerationConfig

from mmlora.config.loading import load_recipe
from mmlora.config.paths import shipped_recipes
from mmlora.errors import MmloraError
from mmlora.models.families import family_for_model_type
from mmlora.models.loading import load_model_and_processor
from mmlora.models.plan import _meta_model, base_parameter_count, make_plan
from mmlora.models.published import published_dir, published_ids, resolve_config
from mmlora.models.tiny import tiny_dir

REAL_RECIPES = [p.stem for p in shipped_recipes() if not p.stem.startswith("tiny_")]

# Total parameters of each checkpoint as published (safetensors, tied weights once). The hub's
# model pages round them ("Model size 2.21B params"); the exact numbers are quoted from public
# sources that read them from the hub's safetensors metadata or counted the loaded model:
PUBLISHED_PARAMETERS = {
    # mteb model metadata (n_parameters of Qwen/Qwen2-VL-2B-Instruct based models) and issue #11
    "Qwen/Qwen2-VL-2B-Instruct": 2_208_985_600,
    # mteb model metadata (n_parameters, Qwen2.5-VL-3B-Instruct based model); deployment checks
    # of merged Qwen2.5-VL-3B checkpoints ("EXPECTED_PARAMS = 3754622976")
    "Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976,
    # public counts of the loaded Qwen3-VL-2B-Instruct ("assert qcount == 2127532032")
    "Qwen/Qwen3-VL-2B-Instruct": 2_127_532_032,
    # parameters of the loaded llava-hf/llava-1.5-7b-hf in a public VLM quantisation benchmark
    "llava-hf/llava-1.5-7b-hf": 7_063_427_072,
    # hub page "7.57B params"; exact: Mistral-7B's published 7,241,732,096 + 64 added vocabulary
    # rows in embeddings and lm_head (524,288) + CLIP ViT-L/14-336 (303,507,456) + projector
    # (20,979,712) + image_newline (4,096); no public source quoting the sum was found
    "llava-hf/llava-v1.6-mistral-7b-hf": 7_566_747_648,
    # run logs of HuggingFaceTB/SmolVLM-256M-Instruct ("params 256484928"); SmolDocling-256M,
    # the same architecture, pinned at 256484928 in public download checks
    "HuggingFaceTB/SmolVLM-256M-Instruct": 256_484_928,
    # KerasHub gemma3 presets (medgemma_4b, same architecture) and public model pins of
    # google/gemma-3-4b-it ("parametros": 4300079472)
    "google/gemma-3-4b-it": 4_300_079_472,
    # parameters of the loaded HF PaliGemma-3B in a public VLM quantisation benchmark; KerasHub's
    # port lists 2,923,335,408, 64 vocabulary rows (x2048) fewer: its vocabulary is 257,152
    "google/paligemma-3b-pt-224": 2_923_466_480,
}

TWO_TURNS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
    {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Brown."}]},
]
QWEN_TURNS = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n"
              "<|im_start|>assistant\nA dog.<|im_end|>\n<|im_start|>user\nWhat colour is it?<|im_end|>\n"
              "<|im_start|>assistant\nBrown.<|im_end|>\n")
# The prompt formats the model cards document, rendered by each checkpoint's own template.
RENDERED = {
    "Qwen/Qwen2-VL-2B-Instruct": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_TURNS,
    "Qwen/Qwen2.5-VL-3B-Instruct": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_TURNS,
    "Qwen/Qwen3-VL-2B-Instruct": QWEN_TURNS,
    "llava-hf/llava-1.5-7b-hf": "USER: <image>\nWhat is in the picture? ASSISTANT: A dog. USER: What colour is it? ASSISTANT: Brown. ",
    "llava-hf/llava-v1.6-mistral-7b-hf": "[INST] <image>\nWhat is in the picture? [/INST] A dog.</s> [INST] What colour is it? [/INST] Brown.</s> ",
    "HuggingFaceTB/SmolVLM-256M-Instruct": ("<|im_start|>User:<image>What is in the picture?<end_of_utterance>\nAssistant: A dog."
                                            "<end_of_utterance>\nUser: What colour is it?<end_of_utterance>\nAssistant: Brown."
                                            "<end_of_utterance>\n"),
    "google/gemma-3-4b-it": ("<bos><start_of_turn>user\n<start_of_image>What is in the picture?<end_of_turn>\n<start_of_turn>model\n"
                             "A dog.<end_of_turn>\n<start_of_turn>user\nWhat colour is it?<end_of_turn>\n<start_of_turn>model\n"
                             "Brown.<end_of_turn>\n"),
}
# Image-processor output for one 640x480 photo at the checkpoint's published settings.
PROCESSED_640x480 = {
    "Qwen/Qwen2-VL-2B-Instruct": {"pixel_values": (1564, 1176), "image_grid_thw": (1, 3)},  # 476x644 px, 28 px per token
    "Qwen/Qwen2.5-VL-3B-Instruct": {"pixel_values": (1564, 1176), "image_grid_thw": (1, 3)},
    "Qwen/Qwen3-VL-2B-Instruct": {"pixel_values": (1200, 1536), "image_grid_thw": (1, 3)},  # 480x640, 32 px per token
    "llava-hf/llava-1.5-7b-hf": {"pixel_values": (1, 3, 336, 336)},
    "llava-hf/llava-v1.6-mistral-7b-hf": {"pixel_values": (1, 5, 3, 336, 336), "image_sizes": (1, 2)},  # 672x672 grid + base
    "HuggingFaceTB/SmolVLM-256M-Instruct": {"pixel_values": (1, 13, 3, 512, 512), "pixel_attention_mask": (1, 13, 512, 512)},
    "google/gemma-3-4b-it": {"pixel_values": (1, 3, 896, 896), "num_crops": (1,)},
    "google/paligemma-3b-pt-224": {"pixel_values": (1, 3, 224, 224)},
}
TWIN = {"qwen2_vl": "tiny/qwen2-vl", "qwen2_5_vl": "tiny/qwen2.5-vl", "qwen3_vl": "tiny/qwen3-vl", "llava": "tiny/llava",
        "llava_next": "tiny/llava-next", "idefics3": "tiny/smolvlm", "gemma3": "tiny/gemma3", "paligemma": "tiny/paligemma"}


def _json(model_id: str, name: str) -> dict:
    return json.loads((published_dir(model_id) / name).read_text())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub and an empty hub cache: only the shipped copies can answer."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # read at import time
    return tmp_path


def test_every_real_recipe_has_published_files():
    models = {load_recipe(name).model.name for name in REAL_RECIPES}
    assert len(REAL_RECIPES) >= 8
    missing = sorted(m for m in models if published_dir(m) is None)
    assert not missing, f"no assets/published folder for {missing}: add the checkpoint's files (docs/contributing.md)"
    assert set(published_ids()) == models == set(PUBLISHED_PARAMETERS)


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMETERS))
def test_config_loads_and_names_its_family(model_id):
    config = AutoConfig.from_pretrained(published_dir(model_id))
    family = family_for_model_type(config.model_type)
    assert TWIN[family.name] in {load_recipe(r).model.name for r in [p.stem for p in shipped_recipes()]}
    (architecture,) = _json(model_id, "config.json")["architectures"]
    assert hasattr(transformers, architecture)


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMETERS))
def test_preprocessor_loads_with_the_pil_backend(model_id):
    image_processor = AutoImageProcessor.from_pretrained(published_dir(model_id), backend="pil")
    assert type(image_processor).__name__.endswith("Pil")
    output = image_processor(images=[Image.new("RGB", (640, 480))], return_tensors="pt")
    assert {k: tuple(v.shape) for k, v in output.items()} == PROCESSED_640x480[model_id]


@pytest.mark.parametrize("model_id", ["Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"])
def test_qwen2_checkpoints_publish_top_level_pixel_bounds(model_id):
    """The format issue #11 is about: top-level min/max_pixels, no `size`."""
    published = _json(model_id, "preprocessor_config.json")
    assert (published["min_pixels"], published["max_pixels"]) == (3136, 12845056) and "size" not in published
    size = AutoImageProcessor.from_pretrained(published_dir(model_id), backend="pil").size
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)


def test_qwen3_vl_publishes_size_and_a_video_preprocessor():
    image = _json("Qwen/Qwen3-VL-2B-Instruct", "preprocessor_config.json")
    video = _json("Qwen/Qwen3-VL-2B-Instruct", "video_preprocessor_config.json")
    assert image["size"] == {"longest_edge": 16777216, "shortest_edge": 65536} and "min_pixels" not in image
    assert video["size"] == {"longest_edge": 25165824, "shortest_edge": 4096}
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor" == transformers.Qwen3VLVideoProcessor.__name__


@pytest.mark.parametrize("model_id", [m for m in sorted(PUBLISHED_PARAMETERS)
                                      if (published_dir(m) / "processor_config.json").exists()])
def test_processor_config_keys_are_the_processor_class_arguments(model_id):
    processor_config = _json(model_id, "processor_config.json")
    processor_class = getattr(transformers, processor_config.pop("processor_class"))
    arguments = inspect.signature(processor_class.__init__).parameters
    assert set(processor_config) <= set(arguments), set(processor_config) - set(arguments)


@pytest.mark.parametrize("model_id", sorted(RENDERED))
def test_chat_template_renders_a_two_turn_image_conversation(model_id):
    family = family_for_model_type(AutoConfig.from_pretrained(published_dir(model_id)).model_type)
    template = _json(model_id, "chat_template.json")["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir(TWIN[family.name]))  # same special tokens as the checkpoint
    rendered = tokenizer.apply_chat_template(TWO_TURNS, chat_template=template, tokenize=False)
    assert rendered == RENDERED[model_id]


def test_paligemma_publishes_no_chat_template():
    folder = published_dir("google/paligemma-3b-pt-224")
    assert not (folder / "chat_template.json").exists() and not (folder / "chat_template.jinja").exists()
    assert "chat_template" not in _json("google/paligemma-3b-pt-224", "tokenizer_config.json")


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMETERS))
def test_special_tokens_agree_with_config_and_family(model_id):
    """tokenizer_config's added tokens carry the ids config.json and generation_config.json use,
    and the tokens the family description relies on."""
    config = _json(model_id, "config.json")
    tokenizer_config = _json(model_id, "tokenizer_config.json")
    by_id = {int(i): t["content"] for i, t in tokenizer_config["added_tokens_decoder"].items()}
    by_content = {v: k for k, v in by_id.items()}
    family = family_for_model_type(config["model_type"])
    image_id = config.get("image_token_id", config.get("image_token_index"))
    assert by_id[image_id] == family.feature_token
    assert family.image_token in by_content and family.turn_end in by_content
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert tokenizer_config[key] is None or tokenizer_config[key] in by_content, key
    generation = GenerationConfig.from_pretrained(published_dir(model_id))
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert eos and all(i in by_id for i in eos)


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMETERS))
def test_parameter_count_from_the_published_config_is_the_published_count(model_id, offline):
    resolved = resolve_config(load_recipe(next(r for r in REAL_RECIPES if load_recipe(r).model.name == model_id)).model)
    assert resolved.published == published_dir(model_id)
    import torch

    assert base_parameter_count(_meta_model(resolved.config, torch.bfloat16)) == PUBLISHED_PARAMETERS[model_id]


def test_plan_prints_the_published_count_offline(offline):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline / "hub-cache")}
    result = subprocess.run([sys.executable, "-m", "mmlora", "plan", "paligemma_3b_lora_vqa"], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "base model:        2,923,466,480 parameters" in result.stdout
    assert "shipped copy of the published checkpoint files" in result.stdout.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name", REAL_RECIPES)
def test_plan_table_of_every_real_recipe_offline(recipe_name, offline):
    """The whole `mmlora plan` output (memory estimate included) for each shipped real recipe."""
    from mmlora.models.plan import format_plan

    recipe = load_recipe(recipe_name)
    table = format_plan(make_plan(recipe), recipe)
    assert f"base model:        {PUBLISHED_PARAMETERS[recipe.model.name]:,} parameters" in table
    assert "shipped copy of the published checkpoint files" in table.splitlines()[0]
    assert "peak GPU memory per device" in table


def test_plan_offline_counts_with_lora_attached(offline):
    plan = make_plan(load_recipe("smolvlm_256m_lora_vqa"))
    assert plan.base_parameters == PUBLISHED_PARAMETERS["HuggingFaceTB/SmolVLM-256M-Instruct"]
    # the recipe trains the projector in full: it is trainable and part of the base count; LoRA is not
    lora = plan.count("total").trainable - plan.count("projector").total
    assert plan.count("total").total == plan.base_parameters + lora and lora > 0
    assert "shipped copy" in plan.source_note and plan.visual_tokens


def _smaller(config: dict) -> dict:
    text = config.get("text_config", config)
    text["num_hidden_layers"] = 2
    return config


def test_a_local_directory_wins_over_the_shipped_copy(offline):
    local = offline / "my-qwen2-vl"
    shutil.copytree(published_dir("Qwen/Qwen2-VL-2B-Instruct"), local)
    (local / "config.json").write_text(json.dumps(_smaller(_json("Qwen/Qwen2-VL-2B-Instruct", "config.json"))))
    plan = make_plan(load_recipe("qwen2_vl_2b_lora_vqa", [f"model.name={local}"]))
    assert plan.source_note == "config only, no weights read"
    assert plan.base_parameters < PUBLISHED_PARAMETERS["Qwen/Qwen2-VL-2B-Instruct"]


def test_the_hub_cache_wins_over_the_shipped_copy(offline):
    model_id = "google/paligemma-3b-pt-224"
    repo = offline / "hub-cache" / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps(_smaller(_json(model_id, "config.json"))))
    resolved = resolve_config(load_recipe("paligemma_3b_lora_vqa").model)
    assert resolved.published is None and resolved.config.text_config.num_hidden_layers == 2


def test_an_unknown_hub_id_offline_still_fails_clearly(offline):
    recipe = load_recipe("qwen2_vl_2b_lora_vqa", ["model.name=someone/not-shipped-model"])
    with pytest.raises(MmloraError, match="'someone/not-shipped-model' is no local folder, and the Hugging Face Hub "
                                          "could not give it as a model id") as caught:
        resolve_config(recipe.model)
    assert "`hf download someone/not-shipped-model --local-dir models/not-shipped-model`" in str(caught.value)


def test_a_folder_without_config_json_is_named_as_not_a_model_folder(offline):
    """An empty or wrong folder (e.g. the parent of the checkpoint): said as such, not as
    transformers' "Unrecognized model ... Should have a `model_type` key"."""
    folder = offline / "downloads"
    folder.mkdir()
    recipe = load_recipe("tiny_vqa", [f"model.name={folder}"])
    with pytest.raises(MmloraError, match=f"'{folder}' has no config.json, so it is not a model folder"):
        load_model_and_processor(recipe.model, device="cpu")

