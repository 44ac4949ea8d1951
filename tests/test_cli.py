"""`mmlora` as users run it: subprocesses, exit codes, one-line errors."""

import subprocess
import sys
import textwrap

import pytest


def mmlora(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "mmlora", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_commands():
    result = mmlora("--help")
    assert result.returncode == 0
    for command in ("train", "infer", "recipes", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_infer_on_tiny_model_prints_an_answer(demo_image):
    result = mmlora("infer", "--model", "tiny/qwen2-vl", "--image", str(demo_image),
                    "--prompt", "What color is the shape?", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no answer printed"
    assert result.stderr.count("running on CPU") == 1


def test_infer_missing_image_is_one_clear_line(tmp_path):
    result = mmlora("infer", "--model", "tiny/qwen2-vl", "--image", str(tmp_path / "nope.png"), "--prompt", "x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mmlora: error: --image: image '{tmp_path / 'nope.png'}' not found (looked at {tmp_path / 'nope.png'})"]


@pytest.mark.parametrize("content", [b"this is text, not an image\n", b""], ids=["text-as-jpg", "zero-bytes"])
def test_infer_non_image_is_one_clear_line(tmp_path, content):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(content)
    result = mmlora("infer", "--model", "tiny/qwen2-vl", "--image", str(fake), "--prompt", "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmlora: error:") and "cannot read image" in lines[0]


def test_gpu_flag_sets_cuda_visible_devices_before_torch_is_imported(demo_image):
    # An import hook records CUDA_VISIBLE_DEVICES at the moment torch is first imported.
    probe = textwrap.dedent(f"""
        import os, sys
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        seen = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" and not seen:
                    seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
                return None
        sys.meta_path.insert(0, Spy())
        from mmlora.cli import main
        code = main(["infer", "--gpu", "1", "--model", "tiny/qwen2-vl", "--image", {str(demo_image)!r},
                     "--prompt", "What color is the shape?", "--max-new-tokens", "2"])
        print("SEEN", seen[0], "FINAL", os.environ["CUDA_VISIBLE_DEVICES"], "CODE", code)
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert "SEEN 1 FINAL 1 CODE 0" in result.stdout, result.stderr


def test_gpu_selection_respects_existing_environment(monkeypatch):
    from mmlora.cli_checks import apply_gpu_selection

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    apply_gpu_selection(None)
    import os
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.slow
def test_infer_with_adapter_alone_reads_base_model(tmp_path, demo_image):
    out = tmp_path / "run"
    # No evaluation inside or after training: this test is about the adapter folder alone.
    train = mmlora("train", "tiny_vqa", "train.max_steps=2", "train.eval_strategy=never", "eval.generate_at_end=false",
                   f"train.output_dir={out}")
    assert train.returncode == 0, train.stderr
    result = mmlora("infer", "--adapter", str(out), "--image", str(demo_image), "--prompt", "What color is the shape?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_eval_reads_and_checks_the_recipe_and_its_overrides_once(tmp_path, monkeypatch, capsys):
    """`mmlora eval` parses the recipe file and the overrides once (whether they set the image
    bounds comes from that same parse): an override error is said once, the file read once."""
    from pathlib import Path

    from mmlora.cli import main
    from mmlora.config.paths import resolve_recipe_path

    recipe = tmp_path / "r.yaml"
    recipe.write_text(resolve_recipe_path("tiny_vqa").read_text())
    reads, read_text = [], Path.read_text

    def counted(path, *args, **kwargs):
        reads.extend([path] if Path(path).resolve() == recipe.resolve() else [])
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    assert main(["eval", str(recipe), "model.max_pixels=abc"]) == 2
    assert capsys.readouterr().err == ("mmlora: error: override 'model.max_pixels=abc': model.max_pixels: got 'abc', "
                                       "expected an integer.\n")
    assert len(reads) == 1
    reads.clear()
    out = tmp_path / "eval"
    assert main(["eval", str(recipe), f"train.output_dir={tmp_path / 'none'}", "--limit", "1",
                 "--output-dir", str(out)]) == 0
    assert len(reads) == 1 and (out / "metrics.json").is_file()
