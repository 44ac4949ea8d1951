"""The Arrow pre-scan (mmlora/data/arrowscan.py): the same findings as the single-process scan on
varied data, in several processes; its result cached by fingerprint (any changed input scans
again); under multi-process training only the first process scans."""

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmlora.config.schema import DataConfig, ModelConfig
from mmlora.data import arrowscan, scan_wait
from mmlora.data.collate import answer_labels, tokenize_text
from mmlora.data.scan import TrainingDataset, load_data_processor, scan_serially, scan_split
from mmlora.data.scanstore import ArrowSamples

Q = "What color is the shape?"


def write_images(root):
    sizes = {"a.png": (56, 56), "b.png": (140, 84), "c.png": (448, 336), "d.jpg": (30, 200)}
    for i, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (40 * i, 90, 200 - 40 * i)).save(root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def varied_rows() -> list:
    """Every row format, several captions, multi-turn chats, special-token text, bad rows."""
    return [
        {"image": "a.png", "question": Q, "answer": "red"},
        {"image": "b.png", "caption": "a wide picture of a blue square on a gray background"},
        {"image": "c.png", "captions": ["big", "a large image with many visual tokens", "large"]},
        {"images": ["a.png", "d.jpg"], "messages": [
            {"role": "user", "content": "<image> and <image>: which is taller?"},
            {"role": "assistant", "content": "the second one"},
            {"role": "user", "content": "And the colour <|im_end|> of the first?"},
            {"role": "assistant", "content": "blue <|image_pad|> really"}]},
        {"image": "d.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                             {"from": "gpt", "value": " ".join(["word"] * 150)}]},
        {"image": "missing.png", "question": Q, "answer": "red"},
        {"image": "broken.png", "question": Q, "answer": "red"},
        {"image": "a.png", "question": Q, "answer": "  "},
        {"image": "a.png", "question": "<image> <image> two markers", "answer": "x"},
        {"image": "b.png", "question": "Is it wide?", "answer": "yes"},
        {"image": "c.png", "question": Q, "answer": " ".join(["long"] * 40)},
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("varied")
    write_images(root)
    rows = varied_rows()
    lines = [json.dumps(r) for r in rows] + ['{"image": "a.png", "question": "unclosed']
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    embedded = [{"image": {"bytes": (root / r["image"]).read_bytes(), "path": None}, "question": r["question"],
                 "answer": r["answer"]} for r in rows if "question" in r and (root / r["image"]).is_file()]
    pq.write_table(pa.Table.from_pylist(embedded), root / "embedded.parquet")
    return root


@pytest.fixture(scope="module")
def processor():
    return load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=448 * 448))


def findings(scan) -> dict:
    """Everything a scan reports, problems as (reason, message, where), samples as their fields."""
    out = {f.name: getattr(scan, f.name) for f in dataclasses.fields(scan)}
    for name in ("problems", "too_long"):
        out[name] = [(p.reason, p.detail, p.where) for p in out[name]]
    out["samples"] = [dataclasses.asdict(s) for s in scan.samples]
    out["image_tokens"] = [[(int(c), getattr(c, "text", None)) for c in counts] for counts in scan.image_tokens]
    out["parts"] = [findings(part) for part in scan.parts]  # a mixture's sources
    return out


@pytest.mark.parametrize("file,options", [
    ("train.jsonl", {}),
    ("train.jsonl", {"too_long": "truncate", "captions_per_image": "random", "train_on": "last_turn"}),
    ("embedded.parquet", {"image_check": "header"}),
])
def test_arrow_scan_finds_what_the_single_process_scan_finds(data, processor, file, options):
    cfg = DataConfig(train="x", on_error="skip", max_length=300, num_proc=2, **options)
    serial = scan_serially(str(data / file), cfg, processor, progress=False)
    arrow = scan_split(str(data / file), cfg, processor, progress=False)
    assert isinstance(arrow.samples, ArrowSamples)  # read from the Arrow file, not held in a list
    assert findings(arrow) == findings(serial)
    assert serial.problems and serial.samples and (serial.too_long or serial.truncated)
    # per sample, as training sees it: token counts, labels (the trained spans), encoded inputs
    for old, new, counts in zip(serial.samples, arrow.samples, arrow.image_tokens):
        ids, offsets = tokenize_text(processor, new.messages, counts)
        labels = answer_labels(processor, new.messages, counts, ids, offsets, cfg.train_on)
        assert (ids, labels) == (lambda i, o: (i, answer_labels(processor, old.messages, counts, i, o, cfg.train_on)))(
            *tokenize_text(processor, old.messages, counts))
    old_set, new_set = (TrainingDataset(s, processor, cfg, seed=3) for s in (serial, arrow))
    for i in range(len(old_set)):
        a, b = old_set[i], new_set[i]
        assert (a.input_ids, a.labels, a.pixel_values.tolist()) == (b.input_ids, b.labels, b.pixel_values.tolist())


def scans_run(monkeypatch) -> list:
    """Calls of the scanning step (not the read of a cached result)."""
    calls, scan_into = [], arrowscan._scan_into
    monkeypatch.setattr(arrowscan, "_scan_into", lambda *a, **k: calls.append(1) or scan_into(*a, **k))
    return calls


def test_second_scan_reads_the_cache_and_any_changed_input_scans_again(data, processor, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    write_images(folder)
    rows = [{"image": "a.png", "question": Q, "answer": "red"}, {"image": "new.png", "question": Q, "answer": "x"}]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x", on_error="skip")

    def report(config=cfg, proc=processor):
        scan = scan_split(str(folder / "t.jsonl"), config, proc, progress=False)
        return len(calls), [p.reason for p in scan.problems], scan.image_tokens, scan.lengths

    first = report()
    assert first[:2] == (1, ["missing_image"])
    assert report() == first  # unchanged: read back, not scanned
    assert report(DataConfig(train="x", on_error="skip", scan_cache=False))[0] == 2  # cache off: scans
    assert report(DataConfig(train="x", on_error="skip", max_length=64))[0] == 3  # a data field
    other = load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=56 * 56))
    assert report(proc=other)[0] == 4  # the processor (its pixel bounds)
    Image.new("RGB", (300, 300)).save(folder / "a.png")  # an image replaced
    changed = report()
    assert changed[0] == 5 and changed[2] != first[2]
    Image.new("RGB", (56, 56)).save(folder / "new.png")  # the missing image added
    assert report()[:2] == (6, [])
    (folder / "t.jsonl").write_text(json.dumps(rows[0]) + "\n")  # the data file
    assert report()[:2] == (7, [])
    assert report()[0] == 7


def test_other_ranks_wait_for_the_first_process_and_read_its_result(data, processor, monkeypatch):
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x", on_error="skip", max_length=299)  # a fingerprint no other test made
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    first_process = []

    def rank_zero_scans_meanwhile(seconds):  # stands for time passing while rank 0 scans
        assert not calls, "a second rank scanned"
        monkeypatch.setenv("LOCAL_RANK", "0")
        first_process.append(scan_split(str(data / "train.jsonl"), cfg, processor, progress=False))
        monkeypatch.setenv("LOCAL_RANK", "1")

    monkeypatch.setattr(scan_wait.time, "sleep", rank_zero_scans_meanwhile)
    waited = scan_split(str(data / "train.jsonl"), cfg, processor, progress=False)
    assert len(calls) == 1 and len(first_process) == 1
    assert findings(waited) == findings(first_process[0])
    # with the cache off too: ranks share the result through the cache folder
    assert findings(scan_split(str(data / "train.jsonl"), dataclasses.replace(cfg, scan_cache=False), processor,
                               progress=False)) == findings(waited) and len(calls) == 1


def test_rows_json_cannot_carry_are_scanned_in_one_process(data, processor, monkeypatch):
    import datetime

    table = pa.Table.from_pylist([{"image": "a.png", "question": Q, "answer": "red",
                                   "taken": datetime.datetime(2024, 5, 1, 12, 0)}])
    pq.write_table(table, data / "dated.parquet")
    calls = scans_run(monkeypatch)
    cfg = DataConfig(train="x")
    scan = scan_split(str(data / "dated.parquet"), cfg, processor, progress=False)
    assert len(calls) == 1 and isinstance(scan.samples, list)  # tried, then the single-process scan
    assert findings(scan) == findings(scan_serially(str(data / "dated.parquet"), cfg, processor, progress=False))


def test_an_empty_file_and_the_folder_holding_it_are_scanned_as_themselves(processor, tmp_path):
    from mmlora.errors import MmloraError

    (tmp_path / "empty.jsonl").write_text("")
    cfg = DataConfig(train="x")
    empty = scan_split(str(tmp_path / "empty.jsonl"), cfg, processor, progress=False)
    assert findings(empty) == findings(scan_serially(str(tmp_path / "empty.jsonl"), cfg, processor, progress=False))
    # the folder's files are the same (one empty file), its result is not the file's
    with pytest.raises(MmloraError, match="is a folder without a dataset"):
        scan_split(str(tmp_path), cfg, processor, progress=False)


def test_a_mixtures_file_sources_are_scanned_on_arrow_cached_each_at_its_own_bounds(processor, tmp_path,
                                                                                       monkeypatch):
    from mmlora.config.sources import data_sources

    Image.new("RGB", (300, 200), "white").save(tmp_path / "doc.png")
    Image.new("RGB", (200, 300), "red").save(tmp_path / "photo.png")
    for name, image in (("docs", "doc.png"), ("photos", "photo.png")):
        rows = [{"image": image, "question": f"{name} {i}?", "answer": f"{name[0]}{i}"} for i in range(3)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = [{"path": str(tmp_path / "docs.jsonl"), "max_pixels": 4 * 28 * 28},
             {"path": str(tmp_path / "photos.jsonl"), "min_pixels": 128 * 28 * 28, "weight": 2}]
    cfg = DataConfig(train=train)
    calls = scans_run(monkeypatch)
    scan = scan_split(train, cfg, processor, progress=False)
    assert len(calls) == 2 and all(isinstance(part.samples, ArrowSamples) for part in scan.parts)
    # each source as the single-process scan finds it at that source's bounds, which its samples carry
    for part, source in zip(scan.parts, data_sources(train)):
        assert findings(part) == findings(scan_serially(source, cfg, processor, progress=False))
    assert [s.pixel_bounds for s in scan.samples] == [(None, 4 * 28 * 28)] * 3 + [(128 * 28 * 28, None)] * 3
    assert scan.image_tokens == [[2]] * 3 + [[140]] * 3  # 300x200 into 4 tokens' area; 200x300 scaled up
    # a second run reads both sources from the cache
    again = scan_split(train, cfg, processor, progress=False)
    assert len(calls) == 2 and findings(again) == findings(scan)
    # the same file at other bounds is another result (the fingerprint keys on the source's bounds)
    other = [dict(train[0], max_pixels=16 * 28 * 28), train[1]]
    changed = scan_split(other, DataConfig(train=other), processor, progress=False)
    assert len(calls) == 3 and changed.parts[0].samples[0].pixel_bounds == (None, 16 * 28 * 28)
    assert changed.parts[0].image_tokens != scan.parts[0].image_tokens
    # bounds equal to the model's leave the processor as it is, yet the samples carry them: scanned again
    plain, same = ([{"path": str(tmp_path / "docs.jsonl"), **extra}, train[1]]
                   for extra in ({}, {"max_pixels": 448 * 448}))
    assert scan_split(plain, DataConfig(train=plain), processor, progress=False).samples[0].pixel_bounds is None
    assert scan_split(same, DataConfig(train=same), processor, progress=False).samples[0].pixel_bounds == \
        (None, 448 * 448) and len(calls) == 5


def conversations(text_a: str, text_b: str) -> list[list[dict]]:
    """Conversation shapes the pre-scan renders (and their prefixes), with the given texts."""
    user = [{"type": "image"}, {"type": "text", "text": text_a}]
    return [
        [{"role": "user", "content": user}],
        [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": text_b}]}],
        [{"role": "system", "content": text_b}, {"role": "user", "content": user},
         {"role": "assistant", "content": text_a}, {"role": "user", "content": text_b},
         {"role": "assistant", "content": [{"type": "text", "text": text_a}]}],
    ]


@pytest.mark.parametrize("name", ["tiny/qwen2-vl", "tiny/llava", "tiny/smolvlm", "tiny/gemma3", "tiny/paligemma"])
def test_the_measuring_processor_renders_and_tokenises_as_the_processor(name):
    from mmlora.data.fastmeasure import MeasuringProcessor

    processor = load_data_processor(ModelConfig(name=name))
    fast = MeasuringProcessor(processor)
    image = processor.family.image_token
    texts = [("What color?", "red"), ("  padded \n", "\tanswer with <|im_end|> and </s> inside  "),
             (f"two {image} markers", " "), ("\n\nlead", "trail\n\n"), ("plain", "x" * 50)]
    for a, b in texts:  # the first texts make each shape's skeleton, the others are built from it
        for messages in conversations(a, b):
            for prompt in (False, True):
                try:
                    expected = processor.render(messages, prompt)
                except Exception as err:  # noqa: BLE001 - the fast path must refuse alike
                    with pytest.raises(type(err)):
                        fast.render(messages, prompt)
                    continue
                assert fast.render(messages, prompt) == expected
                counts = [3] * expected.count(image)
                for _ in range(2):  # the second time from its memo
                    assert fast.render_expanded(messages, counts, prompt) == processor.render_expanded(messages, counts,
                                                                                                        prompt)
                expanded = expected.replace(image, image * 3)
                assert fast.tokenize(expanded) == processor.tokenize(expanded)
    if name == "tiny/qwen2-vl":  # the fast paths were taken, not only fallen back from
        assert fast.encode != processor.tokenize and fast.piecewise is not None and fast.piecewise.run == image
        assert not fast.collapse and len(fast.piecewise.pieces) > 10  # pieces remembered, runs written out
        assert all(skeleton is not False for skeleton in fast.skeletons.values())


def messy_jsonl(root, name: str, crlf: bool, latin1: bool = True) -> bytes:
    """JSON Lines as real exports write them: a UTF-8 BOM, blank lines, a bad JSON line, a
    line with Latin-1 bytes, a BOM inside (files concatenated), deep nesting, no final newline."""
    end = b"\r\n" if crlf else b"\n"
    good = [json.dumps(r).encode() for r in varied_rows()[:4]]
    lines = [b"\xef\xbb\xbf" + good[0], b"", good[1], b"   ", b'{"image": "a.png", "question": "unclosed',
             b'{"image": "a.png", "question": "caf%s?", "answer": "x"}' % (b"\xe9" if latin1 else b"e"),
             b"\xef\xbb\xbf" + good[2],
             b"[" * 100_000, b"\t", good[3]]
    (root / name).write_bytes(end.join(lines))  # the last line without a line end
    return end.join(lines)


@pytest.mark.parametrize("crlf,suffix", [(False, "jsonl"), (True, "jsonl"), (False, "json")])
def test_json_lines_parsed_in_the_workers_give_the_readers_rows_and_located_errors(data, processor, crlf, suffix):
    from mmlora.data.jsonrows import RawLine, jsonl_rows, parse_line
    from mmlora.data.sources import file_rows

    name = f"messy{'-crlf' if crlf else ''}.{suffix}"
    latin1 = suffix == "jsonl"  # a .json file is first read whole: a bad byte is a file error there
    messy_jsonl(data, name, crlf, latin1)
    raw = list(file_rows(data / name, raw=True))
    assert isinstance(raw[0][1], dict) and all(isinstance(row, RawLine) for _, row in raw[1:3] + raw[-1:])

    def parsed(row):
        if isinstance(row, RawLine):
            try:
                row = parse_line(row)
            except Exception as err:  # noqa: BLE001 - the error the reader would have yielded
                row = err
        return (row.reason, row.detail) if isinstance(row, Exception) else row

    assert [(w, parsed(r)) for w, r in raw] == [(w, parsed(r)) for w, r in jsonl_rows(data / name)]
    cfg = DataConfig(train="x", on_error="skip", max_length=300, num_proc=2)
    arrow = scan_split(str(data / name), cfg, processor, progress=False)
    assert isinstance(arrow.samples, ArrowSamples)
    assert findings(arrow) == findings(scan_serially(str(data / name), cfg, processor, progress=False))
    assert [(p.reason, p.where) for p in arrow.problems] == [
        ("malformed_json", f"{data / name}:5"), *[("not_utf8", f"{data / name}:6")] * latin1,
        ("malformed_json", f"{data / name}:8")]
    assert arrow.rows == 7 and len(arrow.samples) == 7 - latin1  # a row of 3 captions among the good rows


def test_a_pretty_printed_json_lines_file_is_still_read_as_one_document(data, processor):
    rows = varied_rows()[:3]
    (data / "pretty.jsonl").write_text(json.dumps(rows, indent=2))
    cfg = DataConfig(train="x", on_error="skip", max_length=300)
    arrow = scan_split(str(data / "pretty.jsonl"), cfg, processor, progress=False)
    assert findings(arrow) == findings(scan_serially(str(data / "pretty.jsonl"), cfg, processor, progress=False))
    assert arrow.rows == 3 and not arrow.problems


@pytest.mark.parametrize("enabled", [True, False])
def test_the_scan_freezes_what_exists_and_pauses_the_collector_per_batch_then_restores_it(
        data, processor, monkeypatch, tmp_path, enabled):
    import gc

    monkeypatch.setenv("MMLORA_SCAN_CACHE", str(tmp_path))
    during, scan_row = [], arrowscan.scan_row
    frozen = []  # objects out of the collector's reach while the rows are scanned
    monkeypatch.setattr(arrowscan, "scan_row", lambda *a: during.append(gc.isenabled()) or
                        frozen.append(gc.get_freeze_count()) or scan_row(*a))
    cfg = DataConfig(train="x", on_error="skip", max_length=300, num_proc=1)
    serial = scan_serially(str(data / "train.jsonl"), cfg, processor, progress=False)
    (gc.enable if enabled else gc.disable)()
    try:
        arrow = scan_split(str(data / "train.jsonl"), cfg, processor, progress=False)
        assert gc.isenabled() == enabled and gc.get_freeze_count() == 0  # as it was before the scan
    finally:
        gc.enable()
    assert during and not any(during)  # paused while the rows were scanned
    assert min(frozen) > 10_000  # what existed before the scan (torch, transformers, the processor)
    assert findings(arrow) == findings(serial)


def test_prefix_renders_of_the_same_messages_share_their_shape_key_and_renders(processor, monkeypatch):
    from mmlora.data import fastmeasure

    fast = fastmeasure.MeasuringProcessor(processor)
    keys, shape_key = [], fastmeasure._shape_key
    monkeypatch.setattr(fastmeasure, "_shape_key", lambda *a: keys.append(1) or shape_key(*a))
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "a square"},
                {"role": "user", "content": "And its colour?"}, {"role": "assistant", "content": "red"}]
    for _ in range(2):  # collate slices new lists of the same message objects for each answer span
        for end, prompt in ((1, True), (2, False), (3, True), (4, False)):
            assert fast.render(messages[:end], prompt) == processor.render(messages[:end], prompt)
    assert len(keys) == 4  # once per prefix, not per list
    copied = [dict(message) for message in messages]  # other objects: their own key, the same render
    assert fast.render(copied[:2]) == processor.render(copied[:2]) and len(keys) == 5


def test_the_piecewise_split_matches_added_tokens_as_the_tokenizer_does(processor):
    from mmlora.data.piecewise import PiecewiseEncoder

    backend = processor.tokenizer.backend_tokenizer
    image = processor.family.feature_token
    encoder = PiecewiseEncoder.checked(backend, processor.tokenize, image)
    assert encoder is not None and encoder.split.pattern.startswith(r"(<\|")  # the tokens' common start, once
    texts = ["<|im_", "<|<|im_end|>", "<<|im_start|>|>", f"x<|{image * 3}|>{image}<|im_start", "<||>", "|><|"]
    for text in texts:
        assert encoder(text) == processor.tokenize(text), text


@pytest.mark.parametrize("too_long", ["drop", "truncate"])
def test_the_image_end_is_found_only_for_samples_truncation_may_cut(data, processor, monkeypatch, too_long):
    from mmlora.data import splitscan
    from mmlora.data.collate import fit_length, image_tokens_end

    def every_image_end(processor, sample, counts, cfg):  # as before: found for every sample
        ids, offsets = tokenize_text(processor, sample.messages, counts)
        labels = answer_labels(processor, sample.messages, counts, ids, offsets, cfg.train_on)
        keep = image_tokens_end(processor, sample.messages, counts, offsets)
        fitted = fit_length(ids, labels, cfg.max_length, cfg.too_long == "truncate", keep)
        return len(ids), (fitted[1] if fitted else None)

    cfg = DataConfig(train="x", on_error="skip", max_length=60, too_long=too_long)
    calls = []
    monkeypatch.setattr(splitscan, "image_tokens_end", lambda *a: calls.append(1) or image_tokens_end(*a))
    scan = scan_serially(str(data / "train.jsonl"), cfg, processor, progress=False)
    assert len(calls) == (0 if too_long == "drop" else sum(length > 60 for length in scan.lengths)) < len(scan.lengths)
    monkeypatch.setattr(splitscan, "_measure", every_image_end)
    assert findings(scan) == findings(scan_serially(str(data / "train.jsonl"), cfg, processor, progress=False))
    assert scan.too_long and (scan.truncated or too_long == "drop")
