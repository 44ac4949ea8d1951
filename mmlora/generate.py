"""Batched greedy generation for evaluation, the demo and `mmlora infer`."""

from __future__ import annotations

from mmlora.collate import generation_batch
from mmlora.data import Sample
from mmlora.processor import ImageTextProcessor


def clean_answer(text: str) -> str:
    """The same post-processing for every model: first non-empty line, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def generate_answers(
    model, processor: ImageTextProcessor, samples: list[Sample], batch_size: int = 8,
    max_new_tokens: int = 32, progress: bool = False, first_line: bool = True,
) -> list[str]:
    """Greedy answers for each sample's prompt (its turns before the final answer).

    `first_line` applies the evaluation post-processing (see `clean_answer`); without it the
    whole stripped answer is returned (for `mmlora infer`).
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    answers = []
    batches = range(0, len(samples), batch_size)
    model.eval()
    for start in tqdm(batches, desc="generating", disable=not progress):
        batch = generation_batch(processor, samples[start: start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=processor.pad_token_id,
                eos_token_id=processor.tokenizer.convert_tokens_to_ids(processor.family.turn_end),
            )
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        texts = [processor.decode(row) for row in new_tokens]
        answers.extend(clean_answer(t) if first_line else t.strip() for t in texts)
    return answers


def exact_match_accuracy(predictions: list[str], samples: list[Sample]) -> float:
    """Share of predictions equal (case- and space-insensitive) to one of the references."""
    def norm(text: str) -> str:
        return " ".join(text.lower().strip().rstrip(".").split())

    hits = sum(norm(p) in {norm(r) for r in s.references} for p, s in zip(predictions, samples))
    return hits / max(1, len(samples))
