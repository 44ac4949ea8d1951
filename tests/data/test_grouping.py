"""Length-grouped sampling: every sample exactly once per epoch, batches of similar length in a
shuffled order, deterministic by seed, sharded across ranks as accelerate does; lengths taken
from the pre-scan equal the encoded lengths."""

import json
import random

import pytest
from PIL import Image

from mmlora.config.schema import DataConfig, ModelConfig
from mmlora.data.grouping import LengthGroupedSampler, group_batches, padding_share, sample_lengths

N = 203  # not a multiple of the batch: the last batch is short


def skewed_lengths(n=N, seed=0):
    rng = random.Random(seed)
    return [rng.choice([40, 60, 300, 380]) + rng.randint(0, 20) for _ in range(n)]


def test_every_sample_exactly_once_per_epoch_in_similar_length_batches():
    lengths = skewed_lengths()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=42)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(N)) and len(sampler) == N
        orders.append(order)
        batches = sampler.batches()
        assert [i for b in batches for i in b] == order
        assert padding_share(lengths, batches) < 0.05
        widest = [max(lengths[i] for i in b) for b in batches]
        assert widest != sorted(widest) and widest != sorted(widest, reverse=True)  # batches shuffled
    assert len({tuple(o) for o in orders}) == 3  # a new order every epoch
    random_batches = [list(range(i, min(i + 8, N))) for i in range(0, N, 8)]
    assert padding_share(lengths, random_batches) > 0.3
    again = LengthGroupedSampler(lengths, batch_size=8, seed=42)
    again.set_epoch(2)
    assert list(again) == orders[2]  # deterministic by seed and epoch (resume replays the order)


def test_windows_keep_batches_from_random_parts_of_the_data():
    lengths = list(range(1, 401))  # all distinct: a global sort would always give the same batches
    first = group_batches(lengths, 4, seed=1, window=5)
    second = group_batches(lengths, 4, seed=2, window=5)
    assert sorted(i for b in first for i in b) == list(range(400))
    assert sorted(map(tuple, first)) != sorted(map(tuple, second))
    random.Random(0).shuffle(order := list(range(400)))
    random_batches = [order[i:i + 4] for i in range(0, 400, 4)]
    assert padding_share(lengths, first) < padding_share(lengths, random_batches) / 2


def test_sharded_across_ranks_as_accelerate_does():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    lengths = skewed_lengths(n=160)
    sampler = LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, seed=3)
    ranks = [list(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), num_processes=2, process_index=r))
             for r in range(2)]
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert sorted(seen) == list(range(160))  # every sample once, across both ranks
    global_batches = sampler.batches()
    for step, step_batches in enumerate(zip(*ranks)):  # each step's rank batches form one global batch
        assert sorted(i for batch in step_batches for i in batch) == sorted(global_batches[step])
    assert padding_share(lengths, [b for rank in ranks for b in rank]) < 0.05


def write_rows(tmp_path, answers):
    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    Image.new("RGB", (224, 168), "blue").save(tmp_path / "b.png")
    rows = [{"image": "a.png" if i % 2 else "b.png", "question": "What color?", "answer": a}
            for i, a in enumerate(answers)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("drop_one", [False, True])
def test_sample_lengths_equal_encoded_lengths(tmp_path, drop_one):
    from mmlora.data.collate import encode_for_training
    from mmlora.data.scan import load_data_processor, scan_split

    processor = load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224))
    answers = ["red", "a blue rectangle on a plain background", "no"]
    if drop_one:  # a sample over max_length is dropped by the scan: lengths no longer line up
        answers.insert(1, "very long " * 60)
    cfg = DataConfig(train=write_rows(tmp_path, answers), max_length=200)
    scan = scan_split(cfg.train, cfg, processor, progress=False)
    assert len(scan.samples) == 3 and (len(scan.lengths) != 3) == drop_one
    lengths = sample_lengths(scan, processor, cfg.max_length)
    assert lengths == [len(encode_for_training(processor, s, cfg.max_length).input_ids) for s in scan.samples]
    assert lengths[0] != lengths[1]


def test_trainer_batches_by_length(tmp_path):
    from transformers import TrainingArguments

    from mmlora.config.loading import load_recipe
    from mmlora.data.scan import prepare_training_data
    from mmlora.models.loading import load_model_and_processor
    from mmlora.training.trainer import MmloraTrainer

    recipe = load_recipe("tiny_vqa", [f"train.output_dir={tmp_path}"])
    loaded = load_model_and_processor(recipe.model, device="cpu")
    data = prepare_training_data(recipe, loaded.processor)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True,
                             remove_unused_columns=False, report_to="none")
    trainer = MmloraTrainer(model=loaded.model, args=args, train_dataset=data.dataset, recipe=recipe,
                            processor=loaded.processor, data_collator=lambda examples: examples)
    assert type(trainer._get_train_sampler()).__name__ != "LengthGroupedSampler"
    trainer.group_lengths = sample_lengths(data.scan, loaded.processor, recipe.data.max_length)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    batches = [batch for batch, _ in zip(trainer.get_train_dataloader(), range(10))]
    assert all(len(b) == 4 for b in batches)
    assert padding_share(trainer.group_lengths, sampler.batches()) <= 0.05
