import torch
from PIL import Image

from mmlora.collate import IGNORE_INDEX, TrainingCollator, encode_for_training
from mmlora.data import Sample, assistant_turn, user_turn


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
