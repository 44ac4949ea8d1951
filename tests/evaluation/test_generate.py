"""Batched generation: left padding, and the same answers as one sample at a time."""

from __future__ import annotations

import pytest

from mmlora.config.loading import load_recipe
from mmlora.config.schema import EvalConfig
from mmlora.data.collate import generation_batch
from mmlora.data.loading import load_samples
from mmlora.evaluation.generate import (
    clean_answer, exact_match_accuracy, generate_answers, generate_outputs, generation_settings,
)


@pytest.fixture(scope="module")
def mixed_samples():
    """VQA and caption prompts over images of three sizes: prompts of different lengths."""
    vqa, caption = load_recipe("tiny_vqa"), load_recipe("tiny_caption")
    samples = load_samples(vqa.data.eval, vqa.data, "vqa")[:8]
    samples += load_samples(caption.data.eval, caption.data, "caption")[:4]
    return samples


@pytest.mark.slow
def test_batched_and_one_by_one_generation_agree(tiny, mixed_samples):
    batch = generation_batch(tiny.processor, mixed_samples)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the prompts should differ in length"
    # Left padding: every row's real tokens end at the last position.
    assert bool((batch["attention_mask"][:, -1] == 1).all())
    assert bool((batch["input_ids"][lengths < lengths.max(), 0] == tiny.processor.pad_token_id).all())

    together = generate_answers(tiny.model, tiny.processor, mixed_samples, batch_size=len(mixed_samples),
                                max_new_tokens=8)
    alone = generate_answers(tiny.model, tiny.processor, mixed_samples, batch_size=1, max_new_tokens=8)
    assert together == alone
    assert any(together), "the untrained model still produces text"


def test_generation_settings_from_the_recipe():
    greedy = generation_settings(EvalConfig(max_new_tokens=5))
    assert greedy == {"max_new_tokens": 5, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0}
    sampled = generation_settings(EvalConfig(do_sample=True, temperature=0.7, top_p=0.9))
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9


def test_answers_are_post_processed_the_same_way():
    assert clean_answer("  \n Red.\nBlue") == "Red."
    assert clean_answer("\n\n") == ""


def test_exact_match_accuracy_uses_the_official_normalisation(mixed_samples):
    vqa = [s for s in mixed_samples if len(s.references) == 1][:2]
    predictions = [f"The {vqa[0].references[0].upper()}!", "none of these"]
    assert exact_match_accuracy(predictions, vqa) == 0.5


def test_each_answer_counts_its_prompt_and_generated_tokens(tiny, mixed_samples):
    """Prompt tokens: the sample's own input (visual tokens in, padding out); completion tokens: up
    to and including the turn end, which a logits processor forces on the first row at step 3."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    samples = mixed_samples[:3]
    processor = tiny.processor
    turn_end = processor.tokenizer.convert_tokens_to_ids(processor.family.turn_end)
    padded_length = generation_batch(processor, samples)["input_ids"].shape[1]

    class EndFirstRowAtStep3(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, turn_end] = -torch.inf  # the other rows run to max_new_tokens
            if input_ids.shape[1] - padded_length == 2:
                scores[0] = -torch.inf
                scores[0, turn_end] = 0.0
            return scores

    outputs = generate_outputs(tiny.model, processor, samples, batch_size=3, max_new_tokens=6, first_line=False,
                               settings={"logits_processor": LogitsProcessorList([EndFirstRowAtStep3()])})
    alone = [generation_batch(processor, [sample])["input_ids"] for sample in samples]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert all(int((ids == image_pad).sum()) > 0 for ids in alone)  # visual tokens are part of the prompt
    assert [o.prompt_tokens for o in outputs] == [ids.shape[1] for ids in alone]
    assert [(o.completion_tokens, o.stopped) for o in outputs] == [(3, True), (6, False), (6, False)]
    assert [o.text for o in outputs] == generate_answers(
        tiny.model, processor, samples, batch_size=3, max_new_tokens=6, first_line=False,
        settings={"logits_processor": LogitsProcessorList([EndFirstRowAtStep3()])})
