import pytest
import torch
from PIL import Image

from mmlora.data.collate import IGNORE_INDEX, TrainingCollator, encode_for_training
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.errors import MmloraError


@pytest.fixture(scope="module")
def tiny_processor():
    from mmlora.config.schema import ModelConfig
    from mmlora.data.scan import load_data_processor

    return load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224))


def trained_text(processor, example) -> str:
    return processor.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX],
                            skip_special_tokens=False)


def test_two_turn_conversation_trains_exactly_the_two_answers(tiny):
    answers = ["a red circle", "It is on a white background."]
    sample = Sample(
        [Image.new("RGB", (112, 112), "red")],
        [{"role": "system", "content": "You are terse."},
         user_turn("Describe the image."), assistant_turn(answers[0]),
         {"role": "user", "content": [{"type": "text", "text": "And the background?"}]},
         assistant_turn(answers[1])],
        "test",
    )
    example = encode_for_training(tiny.processor, sample, max_length=512)
    assert trained_text(tiny.processor, example) == f"{answers[0]}<|im_end|>{answers[1]}<|im_end|>"
    # every trained token carries its own id as label; everything else (system, user turns,
    # the 16 image tokens, "assistant\n" headers) is ignored
    image_id = tiny.processor.image_token_id
    for token, label in zip(example.input_ids, example.labels):
        assert label in (IGNORE_INDEX, token)
        if token == image_id:
            assert label == IGNORE_INDEX
    assert example.input_ids.count(image_id) == 16


def test_batch_padding_is_masked_and_types_kept(tiny):
    short = Sample([Image.new("RGB", (112, 112), "red")], [user_turn("Q?"), assistant_turn("red")], "a")
    long = Sample([Image.new("RGB", (112, 168), "blue")],
                  [user_turn("What color is the background of this picture?"), assistant_turn("white")], "b")
    examples = [encode_for_training(tiny.processor, s, 512) for s in (short, long)]
    batch = TrainingCollator(tiny.processor)(examples)
    n0 = len(examples[0].input_ids)
    assert batch["input_ids"].shape[1] == len(examples[1].input_ids) > n0
    assert (batch["labels"][0, n0:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, n0:] == 0).all() and batch["attention_mask"][1].all()
    assert (batch["input_ids"][0, n0:] == tiny.processor.pad_token_id).all()
    assert batch["mm_token_type_ids"].sum(dim=1).tolist() == [16, 24]
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 8]]
    loss = tiny.model(**batch).loss
    assert torch.isfinite(loss)


def test_text_only_sample_mixes_with_image_samples(tiny):
    text_only = Sample([], [user_turn("Say hi.", n_images=0), assistant_turn("hi")], "t")
    with_image = Sample([Image.new("RGB", (112, 112), "red")], [user_turn("Q?"), assistant_turn("red")], "i")
    examples = [encode_for_training(tiny.processor, s, 512) for s in (text_only, with_image)]
    assert trained_text(tiny.processor, examples[0]) == "hi<|im_end|>"
    batch = TrainingCollator(tiny.processor)(examples)
    assert batch["image_grid_thw"].shape == (1, 3)
    assert torch.isfinite(tiny.model(**batch).loss)


# --- exact masks, from the messages themselves ------------------------------------------------

def trained_spans(processor, example) -> list[str]:
    """Each maximal run of trained tokens, decoded with special tokens kept."""
    spans, run = [], []
    for token, label in zip(example.input_ids + [None], example.labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            spans.append(processor.decode(run, skip_special_tokens=False))
            run = []
    return spans


def assistant_texts(messages) -> list[str]:
    return [" ".join(p["text"] for p in m["content"] if p["type"] == "text")
            for m in messages if m["role"] == "assistant"]


CONVERSATIONS = {
    "multi_turn": ([Image.new("RGB", (112, 112), "red")], [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        user_turn("What color is the shape?"), assistant_turn("red"),
        {"role": "user", "content": [{"type": "text", "text": "And the background?"}]},
        assistant_turn("white, mostly"),
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]}, assistant_turn("Yes.")]),
    "multi_image": ([Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 56), "blue")], [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                     {"type": "image"}, {"type": "text", "text": "these two."}]},
        assistant_turn("The first is red, the second blue.")]),
    "text_only": ([], [user_turn("Name a colour.", n_images=0), assistant_turn("green"),
                       user_turn("Another?", n_images=0), assistant_turn("blue")]),
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("train_on", ["all_turns", "last_turn"])
def test_trained_spans_are_exactly_the_assistant_turns(tiny_processor, name, train_on):
    images, messages = CONVERSATIONS[name]
    example = encode_for_training(tiny_processor, Sample(images, messages, name), 512, train_on=train_on)
    expected = [text + "<|im_end|>" for text in assistant_texts(messages)]
    assert trained_spans(tiny_processor, example) == (expected if train_on == "all_turns" else expected[-1:])
    image_id = tiny_processor.image_token_id
    assert all(label == IGNORE_INDEX for token, label in zip(example.input_ids, example.labels) if token == image_id)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example.input_ids, example.labels))


def test_scan_tokenisation_equals_the_processor_path(tiny_processor):
    """The pre-scan measures text with predicted visual-token counts; training gets the same."""
    from mmlora.data.collate import answer_labels, tokenize_text

    for images, messages in CONVERSATIONS.values():
        example = encode_for_training(tiny_processor, Sample(images, messages, "t"), 512)
        counts = [int(g.prod()) // 4 for g in example.image_grid_thw] if images else []
        ids, offsets = tokenize_text(tiny_processor, messages, counts)
        assert ids == example.input_ids
        assert answer_labels(tiny_processor, messages, counts, ids, offsets) == example.labels


def test_fit_length_never_cuts_an_image():
    from mmlora.data.collate import fit_length

    ids = [1, 7, 7, 7, 9, 1, 2, 3, 4, 5]  # 7: image tokens, 9: the image-end marker
    labels = [IGNORE_INDEX] * 6 + [2, 3, 4, 5]
    keep = 5  # the first 5 tokens hold the image and its end marker
    assert fit_length(ids, labels, 10, False, keep) == (ids, labels)
    assert fit_length(ids, labels, 8, False, keep) is None  # drop policy
    assert fit_length(ids, labels, 8, True, keep) == (ids[:8], labels[:8])
    assert fit_length(ids, labels, 6, True, keep) is None  # no answer token would remain
    assert fit_length(ids, labels, 4, True, keep) is None  # would cut the end marker
    assert fit_length(ids, labels, 3, True, keep) is None  # would cut inside the image


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_image_tokens_end_is_right_after_the_last_image(tiny_processor, name):
    from mmlora.data.collate import image_tokens_end

    images, messages = CONVERSATIONS[name]
    example = encode_for_training(tiny_processor, Sample(images, messages, name), 512)
    counts = [int(g.prod()) // 4 for g in example.image_grid_thw] if images else []
    ids = example.input_ids
    offsets = tiny_processor.encode(tiny_processor.render(messages), images).offsets
    keep = image_tokens_end(tiny_processor, messages, counts, offsets)
    if not images:
        assert keep == 0
    else:
        last_image = max(i for i, t in enumerate(ids) if t == tiny_processor.image_token_id)
        assert keep == last_image + 2
        assert tiny_processor.decode([ids[keep - 1]], skip_special_tokens=False) == "<|vision_end|>"


def test_encode_refuses_what_does_not_fit(tiny_processor):
    sample = Sample([Image.new("RGB", (224, 224))], [user_turn("Q?"), assistant_turn("red")], "data.jsonl:3")
    with pytest.raises(MmloraError, match=r"data\.jsonl:3: sample is \d+ tokens .* cannot be cut"):
        encode_for_training(tiny_processor, sample, 40, truncate=True)
    with pytest.raises(MmloraError, match="pre-scan predicted"):
        encode_for_training(tiny_processor, sample, 512, expected_counts=[16])


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    from mmlora.data.collate import generation_batch
    from mmlora.evaluation.generate import generate_answers

    samples = [
        Sample([Image.new("RGB", (112, 112), "red")], [user_turn("What color is the shape?")], "a"),
        Sample([], [user_turn("Say something about colours, please.", n_images=0)], "b"),
        Sample([Image.new("RGB", (140, 112), "blue"), Image.new("RGB", (56, 56), "green")],
               [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                            {"type": "text", "text": "Two?"}]}], "c"),
        Sample([Image.new("RGB", (112, 168), "yellow")], [user_turn("Color?")], "d"),
    ]
    batch = generation_batch(tiny.processor, samples)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1 and (batch["attention_mask"][:, -1] == 1).all()  # padded left
    together = generate_answers(tiny.model, tiny.processor, samples, batch_size=4, max_new_tokens=6, first_line=False)
    alone = [generate_answers(tiny.model, tiny.processor, [s], batch_size=1, max_new_tokens=6, first_line=False)[0]
             for s in samples]
    assert together == alone and any(together)
