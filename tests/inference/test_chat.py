"""`mmlora chat` fed from stdin: each answer is the model's answer to the conversation so far."""

from __future__ import annotations

import io

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request, Turn


def test_chat_answers_each_turn_in_context_and_reset_starts_over(monkeypatch, capsys):
    image = assets_dir() / "demo" / "images" / "blue_circle_black_112x168.png"
    typed = ["Hello there", f"/image {image}", "/image missing.png", "What color is <image>?", "/bogus",
             "/reset", "Hello there", "/exit", "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(typed) + "\n"))
    code = main(["chat", "--model", "tiny/qwen2-vl", "--max-new-tokens", "6", "--system", "Be brief."])
    captured = capsys.readouterr()
    assert code == 0

    engine = InferenceEngine.load(model="tiny/qwen2-vl")
    settings = GenerationSettings(max_new_tokens=6)
    first = engine.answer([Request("Hello there", system="Be brief.")], settings)[0]
    history = [Turn("user", "Hello there"), Turn("assistant", first)]
    second = engine.answer([Request("What color is <image>?", [image], "Be brief.", history)], settings)[0]
    assert captured.out == f"{first}\n{second}\n{first}\n"
    assert first != second
    notes = captured.err.splitlines()
    assert f"(image 1 attached to your next message: {image})" in notes
    assert any(n.startswith("mmlora: /image: image 'missing.png' not found") for n in notes)
    assert any(n.startswith("mmlora: unknown command /bogus; commands: /image PATH") for n in notes)
    assert "(conversation cleared)" in notes


def test_a_message_past_the_context_is_reported_and_reset_starts_over():
    from mmlora.inference.chat import run_chat

    engine = InferenceEngine.load(model="tiny/qwen2-vl")
    settings = GenerationSettings(max_new_tokens=4)
    long, short = ("word " * 900).strip(), ("word " * 200).strip()  # about 3600 tokens fit 4096; 4400 do not
    out, note = io.StringIO(), io.StringIO()
    assert run_chat(engine, [long, short, "/reset", short], settings, out=out, note=note) == 0
    first = engine.answer([Request(long)], settings)[0]
    history = [Turn("user", long), Turn("assistant", first)]
    tokens = engine.generate([Request(short, history=history)], GenerationSettings(max_new_tokens=1))[0]
    assert note.getvalue().splitlines()[0] == (
        f"mmlora: the conversation with this message takes {tokens.prompt_tokens} tokens (chat template and visual "
        "tokens included) and --max-new-tokens is 4: more than the model's context of 4096 tokens; /reset to start "
        "over, or write a shorter message.")
    assert out.getvalue() == f"{first}\n{engine.answer([Request(short)], settings)[0]}\n"
