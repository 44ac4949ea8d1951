"""Write the small example datasets of README "Data", one per row format, from synthetic images.

    python assets/examples/make_examples.py        # rewrites assets/examples/ in place

Every file is checked by `mmlora data check assets/examples/recipes/<name>.yaml` in the tests.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

from mmlora.data.synthetic import ShapeSpec, draw

HERE = Path(__file__).resolve().parent
IMAGES = [ShapeSpec("red", "circle", "white", (112, 112)), ShapeSpec("blue", "square", "black", (140, 112)),
          ShapeSpec("green", "triangle", "gray", (112, 168)), ShapeSpec("yellow", "circle", "black", (112, 112))]
NAMES = [f"{s.color}_{s.shape}_{s.background}.png" for s in IMAGES]
COLOR_Q, BACKGROUND_Q = "What color is the shape?", "What color is the background?"

VQA = [  # (image index, question, answers): one answer, or ten human answers VQAv2-style
    (0, COLOR_Q, ["red"]),
    (0, BACKGROUND_Q, ["white"] * 8 + ["light gray", "gray"]),
    (1, COLOR_Q, ["blue"]),
    (2, COLOR_Q, ["green"] * 9 + ["olive"]),
    (3, BACKGROUND_Q, ["black"]),
]
CAPTIONS = [(i, [s.caption] + ([f"a {s.shape} in {s.color}"] if i % 2 == 0 else [])) for i, s in enumerate(IMAGES)]


def vqa_rows(image_prefix: str = "images/") -> list[dict]:
    rows = []
    for i, question, answers in VQA:
        row = {"image": image_prefix + NAMES[i], "question": question}
        row.update({"answer": answers[0]} if len(answers) == 1 else {"answers": answers})
        rows.append(row)
    return rows


def caption_rows() -> list[dict]:
    return [{"image": f"images/{NAMES[i]}", **({"caption": c[0]} if len(c) == 1 else {"captions": c})}
            for i, c in CAPTIONS]


def user(*parts):
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def messages_rows() -> list[dict]:
    img = [f"images/{n}" for n in NAMES]
    return [
        {"images": [img[0]], "messages": [user(None, COLOR_Q), assistant("red")]},
        {"images": [img[1]], "messages": [  # multi-turn: both answers are trained
            {"role": "system", "content": "Answer with one word."},
            user(None, COLOR_Q), assistant("blue"), user(BACKGROUND_Q), assistant("black")]},
        {"images": [img[2], img[3]], "messages": [  # two images in one turn
            user(None, None, "Which shape is yellow, the first or the second?"), assistant("the second")]},
        {"messages": [{"role": "user", "content": "Name a warm colour."},  # text only
                      {"role": "assistant", "content": "red"}]},
    ]


def sharegpt_rows() -> list[dict]:
    return [
        {"image": f"images/{NAMES[0]}", "conversations": [
            {"from": "human", "value": f"<image>\n{COLOR_Q}"}, {"from": "gpt", "value": "red"}]},
        {"image": f"images/{NAMES[1]}", "conversations": [
            {"from": "human", "value": f"<image>\n{COLOR_Q}"}, {"from": "gpt", "value": "blue"},
            {"from": "human", "value": BACKGROUND_Q}, {"from": "gpt", "value": "black"}]},
        {"image": [f"images/{NAMES[2]}", f"images/{NAMES[3]}"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich shape is yellow, the first or the second?"},
            {"from": "gpt", "value": "the second"}]},
    ]


def write(out: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for spec, name in zip(IMAGES, NAMES):
        draw(spec).save(images / name)

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl(out / "vqa.jsonl", vqa_rows())
    jsonl(out / "caption.jsonl", caption_rows())
    jsonl(out / "messages.jsonl", messages_rows())
    (out / "sharegpt.json").write_text(json.dumps(sharegpt_rows(), indent=1) + "\n")
    # CSV with other column names (the recipe maps them); several answers as a JSON list cell.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "query", "label"])
    for r in vqa_rows():
        writer.writerow([r["image"], r["question"], r.get("answer") or json.dumps(r["answers"])])
    (out / "vqa.csv").write_text(buffer.getvalue())
    # imagefolder: metadata next to the images, `file_name` naming each image.
    jsonl(images / "metadata.jsonl", [{"file_name": r.pop("image")[len("images/"):], **r} for r in vqa_rows()])
    # Parquet and a save_to_disk folder with the images embedded as bytes (datasets' Image feature).
    embedded = {"image": [], "question": [], "answers": []}
    for r in vqa_rows():
        embedded["image"].append({"bytes": (out / r["image"]).read_bytes(), "path": Path(r["image"]).name})
        embedded["question"].append(r["question"])
        embedded["answers"].append(r.get("answers") or [r["answer"]])
    pq.write_table(pa.Table.from_pydict(embedded), out / "vqa.parquet")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    captions = {"image": [{"bytes": (images / NAMES[i]).read_bytes(), "path": NAMES[i]} for i, _ in CAPTIONS],
                "caption": [c[0] for _, c in CAPTIONS]}
    shutil.rmtree(out / "hf_dataset", ignore_errors=True)
    datasets.Dataset.from_dict(captions, features=features).save_to_disk(str(out / "hf_dataset"))


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
