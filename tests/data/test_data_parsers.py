"""Adversarial files: every parser failure is a located row error or one file error, never a
traceback; CSV damage is reported, never silently shifted; byte-order marks are accepted."""

import codecs
import csv
import json

import pytest

from mmlora.config.schema import DataConfig
from mmlora.data.loading import iter_samples, load_samples
from mmlora.data.scan import scan_split
from mmlora.errors import MmloraError

ROWS = [{"image": "a.png", "question": "What color?", "answer": "red"},
        {"image": "a.png", "question": "What shape?", "answer": "a circle"}]


def results(path, **cfg):
    return list(iter_samples(path, DataConfig(train="x", **cfg)))


def answers(path, **cfg) -> list:
    """Per row: the trained answer, or the refusal reason."""
    return [r.problem.reason if r.problem else r.samples[0].messages[-1]["content"][0]["text"]
            for r in results(path, **cfg)]



# -- parsers ---------------------------------------------------------------------------------


def test_json_nested_too_deeply_is_a_row_error_or_a_file_error(folder):
    deep = "[" * 50_000 + "]" * 50_000
    (folder / "deep.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + '{"image": "a.png", "x": ' + deep + "}\n"
                                       + json.dumps(ROWS[1]) + "\n")
    [ok, bad, after] = results(folder / "deep.jsonl")
    assert ok.problem is None and after.problem is None
    assert bad.problem.reason == "malformed_json" and bad.problem.where.endswith("deep.jsonl:2")
    assert "nested too deeply" in str(bad.problem)
    (folder / "deep.json").write_text("[" + deep + "]")
    with pytest.raises(MmloraError, match=r"deep\.json: nested too deeply"):
        load_samples(folder / "deep.json", DataConfig(train="x"))
    (folder / "cell.csv").write_text(f"image,question,answers\na.png,Q?,{deep}\n")
    assert answers(folder / "cell.csv") == ["malformed_json"]


def test_lone_surrogate_is_refused_naming_the_field_not_a_tokenizer_typeerror(folder, processor):
    # A JSON \ud800 escape without its pair: valid JSON, not valid Unicode text.
    (folder / "s.jsonl").write_text(json.dumps(ROWS[0]) + "\n"
                                    + '{"image": "a.png", "question": "What\\ud800?", "answer": "red"}\n'
                                    + '{"messages": [{"role": "user", "content": "Q"}, '
                                      '{"role": "assistant", "content": [{"type": "text", "text": "x\\udfff"}]}]}\n')
    scan = scan_split(folder / "s.jsonl", DataConfig(train="x"), processor, progress=False)
    assert len(scan.samples) == 1 and [p.reason for p in scan.problems] == ["not_utf8", "not_utf8"]
    assert "field 'question' holds a lone surrogate \\ud800 at character 5" in str(scan.problems[0])
    assert "field 'messages[1].content[0].text'" in str(scan.problems[1])
    assert scan.problems[1].where.endswith("s.jsonl:3")


def test_csv_cell_longer_than_the_csv_module_limit_is_read(folder):
    long_answer = "x" * 200_000  # the csv module refuses cells over 131072 characters by default
    with (folder / "long.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["image", "question", "answer"], ["a.png", "Q?", long_answer],
                                      ["a.png", "Q2?", "short"]])
    assert answers(folder / "long.csv") == [long_answer, "short"]


def test_parquet_with_intact_footer_but_corrupt_pages_reports_the_rows_it_loses(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"image": "a.png", "question": f"question {i} " * 5, "answer": f"answer {i}"}
                                  for i in range(300)])
    pq.write_table(table, folder / "p.parquet", row_group_size=100)
    column = pq.ParquetFile(folder / "p.parquet").metadata.row_group(1).column(1)
    data = bytearray((folder / "p.parquet").read_bytes())
    for i in range(column.data_page_offset, column.data_page_offset + 64):
        data[i] ^= 0x5A  # the second row group's page header and data: the footer stays intact
    (folder / "p.parquet").write_bytes(bytes(data))
    found = results(folder / "p.parquet")
    good = [r for r in found if r.problem is None]
    [bad] = [r for r in found if r.problem is not None]
    assert len(good) == 200 and bad.problem.reason == "corrupt_file"
    assert bad.where.endswith("p.parquet rows 101-200") and "row group 2 of 3" in str(bad.problem)
    assert good[100].samples[0].messages[-1]["content"][0]["text"] == "answer 200"  # group 3 still read


def test_parquet_page_checksums_are_verified(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"image": "a.png", "question": "Q?", "answer": f"answer {i}"} for i in range(300)])
    pq.write_table(table, folder / "c.parquet", row_group_size=100, compression="none", write_page_checksum=True)
    column = pq.ParquetFile(folder / "c.parquet").metadata.row_group(1).column(2)
    data = bytearray((folder / "c.parquet").read_bytes())
    end = (column.dictionary_page_offset or column.data_page_offset) + column.total_compressed_size
    for i in range(end - 20, end - 15):
        data[i] ^= 0x01  # dictionary indices: unverified, rows silently get other rows' answers
    (folder / "c.parquet").write_bytes(bytes(data))
    found = results(folder / "c.parquet")
    assert [r.where.rsplit(" ", 1)[1] for r in found if r.problem] == ["101-200"]
    assert len([r for r in found if r.problem is None]) == 200


def test_truncated_arrow_file_in_a_save_to_disk_folder_is_one_error_naming_it(folder):
    import datasets

    datasets.Dataset.from_list(ROWS * 500).save_to_disk(str(folder / "saved"))
    [arrow] = (folder / "saved").glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(MmloraError, match=rf"save_to_disk folder, but {arrow.name} is truncated or corrupt"):
        load_samples(folder / "saved", DataConfig(train="x"))


# -- CSV / TSV strictness ------------------------------------------------------------------------


def test_unbalanced_quote_is_reported_not_swallowing_the_rows_after_it(folder):
    (folder / "q.csv").write_text('image,question,answer\na.png,Q1?,red\na.png,"Q2?,blue\n'
                                  'a.png,Q3?,green\na.png,Q4?,gray\n')
    found = results(folder / "q.csv")
    assert [r.problem.reason if r.problem else "ok" for r in found] == ["ok", "malformed_csv"]
    assert found[1].where.endswith("q.csv:3") and "never closed" in str(found[1].problem)
    assert "lines 3-5" in str(found[1].problem)
    with pytest.raises(MmloraError, match=r"q\.csv:3: the quote that opens a cell on line 3 is never closed"):
        load_samples(folder / "q.csv", DataConfig(train="x"))


def test_a_quote_closed_rows_later_is_reported_but_real_multiline_cells_are_kept(folder):
    # The stray quote closes at the end of line 4 ("... 5 inch\""): lines 2-4 would be one answer.
    (folder / "late.csv").write_text('image,question,answer\na.png,Q1?,"red\na.png,Q2?,blue\n'
                                     'a.png,Q3?,5 inch"\na.png,Q4?,gray\n')
    assert answers(folder / "late.csv") == ["malformed_csv", "gray"]
    assert "lines 2-4 were read as one row" in str(results(folder / "late.csv")[0].problem)
    (folder / "multi.csv").write_text('image,caption\na.png,"A red square.\nIt sits, alone, on white."\n')
    assert answers(folder / "multi.csv") == ["A red square.\nIt sits, alone, on white."]
    (folder / "mid.csv").write_text('image,question,answer\na.png,"Q1" and more,red\na.png,Q2?,blue\n')
    assert answers(folder / "mid.csv") == ["malformed_csv", "blue"]


@pytest.mark.parametrize("name, text", [
    ("extra.csv", "image,question,answer\na.png,What is it, really?,red\na.png,Q2?,blue\n"),
    ("extra.tsv", "image\tquestion\tanswer\na.png\tWhat?\tred\textra\na.png\tQ2?\tblue\n"),
])
def test_extra_cells_are_reported_never_dropped(folder, name, text):
    (folder / name).write_text(text)
    found = results(folder / name)
    assert [r.problem.reason if r.problem else "ok" for r in found] == ["malformed_csv", "ok"]
    assert "the row has 4 cells but the header has 3 columns (image, question, answer)" in str(found[0].problem)
    assert ("a tab inside" if name.endswith("tsv") else "a ',' inside") in str(found[0].problem)


def test_trailing_empty_cells_and_spaced_headers_are_harmless(folder):
    (folder / "t.csv").write_text("image, question , answer,\na.png,Q?,red,\n")
    assert answers(folder / "t.csv") == ["red"]


# -- byte-order marks ------------------------------------------------------------------------------


def bom_files(folder) -> dict:
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    array = json.dumps(ROWS, indent=2)
    table = "image,question,answer\n" + "".join(f"{r['image']},{r['question']},{r['answer']}\n" for r in ROWS)
    return {"rows.jsonl": jsonl, "rows.json": array, "rows.csv": table, "rows.tsv": table.replace(",", "\t"),
            "lines.json": jsonl}


@pytest.mark.parametrize("bom, codec", [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                                        (codecs.BOM_UTF16_BE, "utf-16-be"), (b"", "utf-16-le"), (b"", "utf-16-be")])
def test_byte_order_marks_are_accepted_in_every_text_format(folder, bom, codec):
    for name, text in bom_files(folder).items():
        (folder / name).write_bytes(bom + text.replace("\n", "\r\n").encode(codec))
        assert answers(folder / name) == ["red", "a circle"], name


def test_concatenated_files_with_byte_order_marks_are_read(folder):
    part = codecs.BOM_UTF8 + "".join(json.dumps(r) + "\r\n" for r in ROWS).encode()
    (folder / "cat.jsonl").write_bytes(part + part)
    assert answers(folder / "cat.jsonl") == ["red", "a circle"] * 2


def test_invalid_utf16_is_one_file_error(folder):
    (folder / "bad16.jsonl").write_bytes(codecs.BOM_UTF16_LE + json.dumps(ROWS[0]).encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(MmloraError, match=r"bad16\.jsonl: not valid UTF-16 text .*re-export the file as UTF-8"):
        load_samples(folder / "bad16.jsonl", DataConfig(train="x"))
