"""`mmlora export` and `mmlora merge` on a real run: the model card says what the run's files
record (base, data, recipe, metrics), the vLLM verdict is printed, a hand-written README stays."""

from __future__ import annotations

import json

import pytest
import yaml

from mmlora.cli import main
from mmlora.errors import MmloraError
from mmlora.inference.export import export_folder


@pytest.mark.slow
def test_export_and_merge_write_model_cards_from_the_run_files(tmp_path, capsys):
    run, merged = tmp_path / "run", tmp_path / "merged"
    assert main(["train", "tiny_vqa", "train.max_steps=2", "eval.generate_at_end=false", "lora.projector=frozen",
                 f"train.output_dir={run}"]) == 0
    assert "not checked yet: `mmlora export" in (run / "README.md").read_text()  # the card `mmlora train` wrote
    assert main(["eval", "tiny_vqa", "--adapter", str(run), "--limit", "4", "eval.max_new_tokens=2"]) == 0
    capsys.readouterr()

    assert main(["export", str(run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "vLLM: loads as is (language-model LoRA only)."
    assert printed[2] == "vLLM flags: --enable-lora --max-lora-rank 16"
    card = (run / "README.md").read_text()
    assert "[More Information Needed]" not in card and "base_model: tiny/qwen2-vl" in card
    data = json.loads((run / "data_report.json").read_text())
    assert (f"- train: `asset://demo/vqa_train.jsonl`: {data['samples']} samples from {data['rows']} rows, "
            f"{data['skipped_rows']} rows skipped") in card
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert f"- LoRA: r={recipe['lora']['r']}, alpha={recipe['lora']['alpha']}," in card
    train_loss = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()][-1]["train_loss"]
    assert f"- training loss (mean over the run): {train_loss:.4g} at step 2" in card
    metrics = json.loads((run / "eval_eval" / "metrics.json").read_text())
    (label, values), = metrics["models"].items()
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool))
    assert f"- `mmlora eval` on eval (4 samples, eval_eval/metrics.json), {label}: {shown}" in card

    assert main(["merge", "--adapter", str(run), "--out", str(merged)]) == 0
    assert f"vLLM: loads as is, as a plain model (vllm serve {merged})" in capsys.readouterr().out
    merged_card = (merged / "README.md").read_text()
    assert "library_name: transformers" in merged_card and "merged model fine-tuned from tiny/qwen2-vl" in merged_card
    assert f"- LoRA: r={recipe['lora']['r']}," in merged_card and f"{train_loss:.4g}" in merged_card

    (run / "README.md").write_text("# My notes\n")
    assert export_folder(run)[-1] == f"model card: not written: {run / 'README.md'} was written by hand and is kept."
    assert (run / "README.md").read_text() == "# My notes\n"


def test_export_of_a_folder_that_is_no_model_is_one_line(tmp_path):
    with pytest.raises(MmloraError, match="is neither an adapter folder"):
        export_folder(tmp_path)
