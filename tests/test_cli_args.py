"""Command-line arguments: overrides anywhere, key suggestions, one-line errors before torch.

"Before torch" is measured, not timed: each case runs `mmlora.cli.main` in a fresh interpreter
and reports whether torch was imported by the time the command failed.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from mmlora.config.loading import load_recipe, recipe_from_dict
from mmlora.errors import MmloraError


def run_main(*argv, cwd=None):
    """(exit code, stderr lines, whether torch got imported) of `mmlora ARGV` in a fresh process."""
    probe = textwrap.dedent(f"""
        import json, sys
        from mmlora.cli import main
        try:
            code = main({list(argv)!r})
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.stdout.strip(), result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome["code"], result.stderr.strip().splitlines(), outcome["torch"]


def assert_one_line_error(lines, *needles):
    assert len(lines) == 1 and lines[0].startswith("mmlora: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- overrides anywhere ------------------------------------------------------------------------


def test_overrides_after_options_join_the_overrides():
    from mmlora.cli import build_parser
    from mmlora.cli_checks import collect_overrides

    parser = build_parser()
    args = collect_overrides(parser, ["train", "tiny_vqa", "train.epochs=2", "--output-dir", "out",
                                      "lora.r=4", "--overwrite", "train.seed=3"])
    assert args.overrides == ["train.epochs=2", "lora.r=4", "train.seed=3"] and args.output_dir == "out"
    args = collect_overrides(parser, ["eval", "tiny_vqa", "--adapter", "a", "eval.limit=3"])
    assert args.overrides == ["eval.limit=3"] and args.adapter == "a"
    args = collect_overrides(parser, ["data", "check", "tiny_vqa", "--json", "data.max_length=64"])
    assert args.items == ["tiny_vqa", "data.max_length=64"]


def test_resume_followed_by_an_override_resumes_latest(tmp_path):
    from mmlora.cli import build_parser
    from mmlora.cli_checks import collect_overrides

    parser = build_parser()
    args = collect_overrides(parser, ["train", "tiny_vqa", "--resume", "train.max_steps=8"])
    assert args.resume == "latest" and args.overrides == ["train.max_steps=8"]
    args = collect_overrides(parser, ["train", "tiny_vqa", "lora.r=4", "--resume"])
    assert args.resume == "latest" and args.overrides == ["lora.r=4"]
    checkpoint = tmp_path / "run" / "checkpoint-4"
    args = collect_overrides(parser, ["train", "tiny_vqa", "--resume", str(checkpoint), "lora.r=4"])
    assert args.resume == str(checkpoint) and args.overrides == ["lora.r=4"]
    with pytest.raises(SystemExit):  # a real unknown option is still refused
        collect_overrides(parser, ["train", "tiny_vqa", "--bogus"])


def test_override_after_an_option_reaches_the_recipe_without_torch(tmp_path):
    code, lines, torch_loaded = run_main("train", "tiny_vqa", "--output-dir", str(tmp_path / "o"), "lora.rr=4")
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, "override 'lora.rr=4'", "'lora.r'")


# -- did you mean ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, suggestion", [
    ("lora.rr=4", "Did you mean 'lora.r' (lora.r=4)?"),
    ("lora.epochs=3", "Did you mean 'train.epochs' (train.epochs=3)?"),
    ("epoch=3", "'train.epochs'"),
    ("trian.seed=1", "'train.seed'"),
    ("lr=2e-4", "'train.learning_rate': train.learning_rate=2e-4."),
    ("num_train_epochs=2", "'train.epochs': train.epochs=2."),
    ("per_device_train_batch_size=4", "'train.batch_size': train.batch_size=4."),
    ("gradient_accumulation_steps=8", "'train.grad_accum'"),
    ("lora_alpha=32", "'lora.alpha'"),
    ("batch_size=2", "'train.batch_size' or 'eval.batch_size'"),
])
def test_unknown_override_suggests_the_full_dotted_key(override, suggestion):
    with pytest.raises(MmloraError) as caught:
        load_recipe("tiny_vqa", [override])
    message = str(caught.value)
    assert message.startswith(f"override '{override}': unknown key"), message
    assert suggestion in message
    assert "tiny_vqa.yaml" not in message  # the override is wrong, not the recipe file


def test_warmup_steps_suggests_the_ratio_without_carrying_the_step_count_over():
    with pytest.raises(MmloraError) as caught:
        load_recipe("tiny_vqa", ["warmup_steps=100"])
    message = str(caught.value)
    assert "'train.warmup_ratio'" in message and "share of the total steps" in message
    assert "warmup_ratio=100" not in message


def test_foreign_names_point_at_real_keys():
    from mmlora.config.keys import FOREIGN_NAMES, recipe_keys

    keys = set(recipe_keys())
    assert {target for target, _note in FOREIGN_NAMES.values()} <= keys
    assert not set(FOREIGN_NAMES) & {k.rsplit(".", 1)[-1] for k in keys}  # never shadows a real name


def test_bad_override_values_name_the_override():
    with pytest.raises(MmloraError, match=r"^override 'train\.epochs=abc': train\.epochs: got 'abc', expected a number"):
        load_recipe("tiny_vqa", ["train.epochs=abc"])
    with pytest.raises(MmloraError, match=r"^override 'train\.epochs=\[': the value is not valid YAML"):
        load_recipe("tiny_vqa", ["train.epochs=["])
    with pytest.raises(MmloraError, match=r"^override 'train\.epochs\.x=1': 'train\.epochs' is a value"):
        load_recipe("tiny_vqa", ["train.epochs.x=1"])
    # A cross-field check the override broke names the recipe and the override together.
    with pytest.raises(MmloraError, match=r"tiny_vqa\.yaml with override model\.min_pixels=999999: model\.min_pixels"):
        load_recipe("tiny_vqa", ["model.min_pixels=999999"])


def test_unknown_recipe_file_key_suggests_full_key_across_sections():
    with pytest.raises(MmloraError, match=r"Unknown recipe key 'lora\.epochs'\. Did you mean 'train\.epochs'\?"):
        recipe_from_dict({"data": {"train": "x"}, "lora": {"epochs": 3}})


# -- one-line errors, before torch ---------------------------------------------------------------


def test_train_report_to_missing_package_fails_before_torch():
    for target in ("wandb", "mlflow"):
        if importlib.util.find_spec(target) is not None:
            continue
        code, lines, torch_loaded = run_main("train", "tiny_vqa", f"train.report_to={target}")
        assert code == 2 and not torch_loaded
        assert_one_line_error(lines, f"train.report_to={target}", f"pip install {target}")
    code, lines, torch_loaded = run_main("train", "tiny_vqa", "train.report_to=wandbb")
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, "unknown target 'wandbb'", "Did you mean 'wandb'?")


def test_report_targets_match_the_trainer_integrations():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from mmlora.training.preflight import REPORT_PACKAGES

    assert set(REPORT_PACKAGES) == set(INTEGRATION_TO_CALLBACK)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed")
def test_qlora_without_bitsandbytes_fails_before_the_pre_scan(tmp_path):
    out = tmp_path / "run"
    code, lines, torch_loaded = run_main("train", "tiny_vqa", "model.quantization=4bit", "--output-dir", str(out))
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, "model.quantization=4bit", "bitsandbytes")
    assert not out.exists()  # no data_report.json left behind to block the rerun


def test_merge_of_a_missing_adapter_fails_before_torch(tmp_path):
    code, lines, torch_loaded = run_main("merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, "no such directory")


def test_recipes_cp_into_a_missing_folder_is_one_line(tmp_path):
    code, lines, _ = run_main("recipes", "cp", "tiny_vqa", str(tmp_path / "missing" / "x.yaml"))
    assert code == 2
    assert_one_line_error(lines, "does not exist")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens: got 0"),
    (["--gpu", "abc"], "--gpu 'abc'"),
    (["--output", "OUT", "--resume", "--top-p", "0"], "--top-p: got 0.0, expected above 0 and at most 1"),
    (["--temperature", "-1"], "--temperature: got -1.0, expected 0 or more"),
    (["--num-beams", "0"], "--num-beams: got 0, expected 1 or more"),
    (["--min-pixels", "5000", "--max-pixels", "4000"], "--min-pixels (5000) is larger than --max-pixels (4000)"),
    (["--max-pixels", "-3"], "--max-pixels: got -3"),
])
def test_infer_argument_errors_are_one_line_before_torch(demo_image, extra, needle):
    extra = [str(demo_image) if part == "SECOND" else part for part in extra]
    code, lines, torch_loaded = run_main("infer", "--model", "tiny/qwen2-vl", "--image", str(demo_image),
                                         "--prompt", "x", *extra)
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, needle)


def test_infer_directory_as_image_says_directory(tmp_path):
    code, lines, torch_loaded = run_main("infer", "--model", "tiny/qwen2-vl", "--image", str(tmp_path), "--prompt", "x")
    assert code == 2 and not torch_loaded
    assert_one_line_error(lines, "is a directory")


@pytest.mark.parametrize("model_id, smallest", [("tiny/qwen2-vl", 28 * 28), ("tiny/qwen3-vl", 32 * 32)])
def test_max_pixels_below_one_visual_token_is_refused(model_id, smallest):
    import json as _json

    from mmlora.models.families import family_for_model_type
    from mmlora.models.processor import load_image_processor
    from mmlora.models.tiny import tiny_dir

    source = tiny_dir(model_id)
    family = family_for_model_type(_json.loads((source / "config.json").read_text())["model_type"])
    with pytest.raises(MmloraError, match=rf"max_pixels={smallest - 1} .* use at least {smallest}\."):
        load_image_processor(str(source), family, 100, smallest - 1)
    assert load_image_processor(str(source), family, 100, smallest) is not None
