"""Batched generation for evaluation, the demo and `mmlora infer`.

Prompts are padded on the left (see `mmlora.data.collate.generation_batch`), so every prompt ends at
the same position and generation appends right after it; with the attention mask the model sees
the same tokens and positions as for the prompt alone, so batched and one-by-one greedy
generation give the same answers (tested). Decoding is greedy unless the recipe's `eval`
section asks for sampling or beams.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mmlora.data.collate import generation_batch, left_padded_batch
from mmlora.data.samples import Sample
from mmlora.models.processor import Encoded, ImageTextProcessor


def clean_answer(text: str) -> str:
    """The same post-processing for every model: first non-empty line, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def generation_settings(eval_cfg) -> dict:
    """`model.generate` keyword arguments from a recipe's `eval` section (an `EvalConfig`).

    Sampling parameters are passed only when sampling is on: transformers warns about
    temperature/top_p given with greedy decoding.
    """
    settings = {
        "max_new_tokens": eval_cfg.max_new_tokens,
        "num_beams": eval_cfg.num_beams,
        "do_sample": eval_cfg.do_sample,
        "repetition_penalty": eval_cfg.repetition_penalty,
    }
    if eval_cfg.do_sample:
        settings.update(temperature=eval_cfg.temperature, top_p=eval_cfg.top_p)
    return settings


@dataclass
class Generated:
    """One generated answer and its token counts (what OpenAI's `usage` reports)."""

    text: str = ""
    prompt_tokens: int = 0
    """The prompt as the model saw it: chat template and visual tokens included, padding not."""
    completion_tokens: int = 0
    """Tokens generated, up to and including the turn end that stopped the answer."""
    stopped: bool = False
    """True when the model ended its turn; False when max_new_tokens (or another limit) cut it."""


def generate_answers(
    model, processor: ImageTextProcessor, samples: list[Sample], batch_size: int = 8,
    max_new_tokens: int = 32, progress: bool = False, first_line: bool = True,
    settings: dict | None = None, desc: str = "generating",
) -> list[str]:
    """Answers to each sample's prompt (its turns before the final answer), `batch_size` at a time.

    `settings`: further `generate` arguments (see `generation_settings`); greedy by default.
    `first_line` applies the evaluation post-processing (see `clean_answer`); without it the
    whole stripped answer is returned (for `mmlora infer`).
    """
    return [g.text for g in generate_outputs(model, processor, samples, batch_size, max_new_tokens, progress,
                                             first_line, settings, desc)]


def generate_outputs(
    model, processor: ImageTextProcessor, samples: list[Sample], batch_size: int = 8,
    max_new_tokens: int = 32, progress: bool = False, first_line: bool = True,
    settings: dict | None = None, desc: str = "generating",
) -> list[Generated]:
    """`generate_answers` with each answer's token counts, read off the batch and the output."""
    chunks = [samples[start: start + batch_size] for start in range(0, len(samples), batch_size)]
    batches = (generation_batch(processor, chunk) for chunk in chunks)  # encoded a batch at a time
    return _generate(model, processor, batches, len(chunks), max_new_tokens, progress, first_line, settings, desc)


def generate_from_prompts(
    model, processor: ImageTextProcessor, prompts: list[Encoded], batch_size: int = 8,
    max_new_tokens: int = 32, first_line: bool = True, settings: dict | None = None,
) -> list[Generated]:
    """`generate_outputs` for prompts encoded already (`mmlora.data.collate.encode_prompt`), for
    instance to check their length first: their images are not processed again."""
    chunks = [prompts[start: start + batch_size] for start in range(0, len(prompts), batch_size)]
    batches = (left_padded_batch(processor, chunk) for chunk in chunks)
    return _generate(model, processor, batches, len(chunks), max_new_tokens, False, first_line, settings,
                     "generating")


def _generate(model, processor: ImageTextProcessor, batches: Iterable[dict], count: int, max_new_tokens: int,
              progress: bool, first_line: bool, settings: dict | None, desc: str) -> list[Generated]:
    """Generate for each left-padded batch (`count` of them, for the progress bar)."""
    import torch
    from tqdm.auto import tqdm

    options = {"max_new_tokens": max_new_tokens, "do_sample": False, **(settings or {})}
    device = next(model.parameters()).device
    turn_end = processor.tokenizer.convert_tokens_to_ids(processor.family.turn_end)
    outputs = []
    model.eval()
    for batch in tqdm(batches, total=count, desc=desc, unit="batch", disable=None if progress else True):  # None: no bar off a terminal
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            output = model.generate(
                **batch,
                **options,
                pad_token_id=processor.pad_token_id,
                eos_token_id=turn_end,
            )
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()  # left padding is masked
        for row, prompt_tokens in zip(new_tokens, prompt_lengths):
            text = processor.decode(row)
            ends = (row == turn_end).nonzero()  # a finished row is padded after its turn end
            generated = int(ends[0, 0]) + 1 if len(ends) else int(row.shape[0])
            outputs.append(Generated(clean_answer(text) if first_line else text.strip(), int(prompt_tokens),
                                     generated, stopped=bool(len(ends))))
    return outputs


def exact_match_accuracy(predictions: list[str], samples: list[Sample]) -> float:
    """Share of predictions that equal one of their sample's references after the official VQA
    answer normalisation (`mmlora.evaluation.metrics.exact_match`: case, punctuation, articles, number
    words, contractions)."""
    from mmlora.evaluation.metrics import exact_match

    hits = sum(exact_match(p, s.references) for p, s in zip(predictions, samples))
    return hits / max(1, len(samples))
