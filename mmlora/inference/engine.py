"""One loaded model answering many requests: the engine behind `mmlora infer`, `mmlora chat`
and the server.

    from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request, Turn

    engine = InferenceEngine.load(adapter="runs/tiny_vqa")            # or model="tiny/qwen2-vl"
    engine.answer([Request("What color is the shape?", ["a.png"]),
                   Request("Describe <image> and <image>.", ["a.png", "b.png"], system="Be brief.")])
    for chunk in engine.stream(Request("Describe it.", ["a.png"])):   # text as it is generated
        print(chunk, end="")

The model is loaded once with the trained preprocessing (pixel bounds from the adapter's
recipe or the model folder's mmlora.json: mmlora/models/adapter_loading.py) and the adapter
merged in. `answer` generates for a batch of requests at once, left padded
(mmlora/evaluation/generate.py); greedy answers are the same as one request at a time (tested).
Calls are serialised by a lock, so one engine may be shared by threads (a server).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.config.paths import ASSET_SCHEME, resolve_data_path
from mmlora.data.collate import prompt_messages
from mmlora.data.images import load_image, resolve_image
from mmlora.data.samples import RowError, Sample, assistant_turn, system_turn, user_turn
from mmlora.evaluation.generate import Generated


@dataclass
class Turn:
    """One earlier turn of a conversation: `role` "user" (with its `images`) or "assistant"."""

    role: str
    text: str
    images: list = field(default_factory=list)


@dataclass
class Request:
    """One question to answer.

    `images`: local paths (relative to the current directory), `asset://` names, http(s) URLs
    (fetched only when the engine allows URLs), `data:` URIs, bytes or PIL images. `<image>`
    markers in `prompt` place them; without markers they go before the text. `history`: the
    conversation so far (chat), oldest first, each user turn with its own images.
    """

    prompt: str
    images: list = field(default_factory=list)
    system: str | None = None
    history: list[Turn] = field(default_factory=list)
    where: str = "request"
    """Where the request came from (`file:line`), named in its error messages."""


@dataclass
class GenerationSettings:
    """How to decode. `temperature` 0 means greedy (deterministic); above 0 samples with
    `top_p`. `num_beams` > 1 runs beam search. `seed` makes sampling repeatable."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    seed: int | None = None

    def generate_kwargs(self) -> dict:
        """`model.generate` keyword arguments; sampling parameters only when sampling (transformers
        warns about temperature/top_p given with greedy decoding)."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                  "do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


def resolve_images(refs: list, where: str, root: Path | None = None, allow_urls: bool = False,
                   allow_outside_root: bool = False) -> list:
    """Image references checked as the data layer checks them (mmlora/data/images.py): a local
    file must exist, `asset://` names a shipped file, a URL needs `allow_urls`. `root`: relative
    paths are read from there and may not leave it (unless `allow_outside_root`); None: the
    current directory, any path allowed (the caller typed it). RowError located at `where`."""
    resolved = []
    for ref in refs:
        if isinstance(ref, str) and ref.startswith(ASSET_SCHEME):
            ref, outside_ok = resolve_data_path(ref), True
        else:
            outside_ok = root is None or allow_outside_root
        try:
            resolved.append(resolve_image(ref, root or Path.cwd(), outside_ok, allow_urls))
        except RowError as err:
            # The data layer's hints name recipe keys; here the switch is the caller's option.
            if err.reason == "url_not_allowed":
                err = RowError(err.reason, f"image '{str(ref)[:80]}' is a URL; fetching URLs is off "
                                           "(--allow-urls turns it on)")
            elif err.reason == "image_outside_root":
                err = RowError(err.reason, f"image '{ref}' is outside {Path(os.path.abspath(root))} "
                                           "(--allow-outside-root allows it)")
            raise err.at(where) from None
    return resolved


def request_sample(request: Request, prompt_field: str = "prompt") -> Sample:
    """The request as a sample: system turn, earlier turns, then the prompt (no answer yet).
    `prompt_field` names the prompt in a marker-count error (e.g. "--prompt")."""
    messages, images = [], []
    if request.system:
        messages.append(system_turn(request.system))
    for turn in request.history:
        if turn.role == "assistant":
            messages.append(assistant_turn(turn.text))
        elif turn.role == "user":
            messages.append(user_turn(turn.text, len(turn.images), field="history"))
            images += list(turn.images)
        else:
            raise RowError("bad_row", f"a history turn has role {turn.role!r}; use 'user' or 'assistant'",
                           request.where)
    try:
        messages.append(user_turn(request.prompt, len(request.images), field=prompt_field))
    except RowError as err:
        raise err.at(request.where) from None
    return Sample(images + list(request.images), messages, source=request.where)


class InferenceEngine:
    """A model and its processor, loaded once, answering requests (see the module docstring)."""

    def __init__(self, model, processor, name: str, allow_urls: bool = False):
        self.model, self.processor, self.name, self.allow_urls = model, processor, name, allow_urls
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | None = None, adapter: str | None = None, min_pixels: int | None = None,
             max_pixels: int | None = None, device: str | None = None,
             allow_urls: bool = False) -> "InferenceEngine":
        """Load `model` (hub id, folder or tiny id) and/or `adapter` (a `mmlora train` folder; its
        base model is read from it), with the trained pixel bounds unless given, the adapter
        merged in. `device`: default cuda when visible, else cpu. `allow_urls`: fetch http(s)
        images (refused otherwise, as data.allow_urls)."""
        from mmlora.models.adapter_loading import load_with_adapter, model_config_for

        cfg = model_config_for(model, adapter, min_pixels, max_pixels)
        net, loaded = load_with_adapter(cfg, adapter, device=device)
        return cls(net, loaded.processor, name=str(adapter or model), allow_urls=allow_urls)

    def _sample(self, request: Request) -> Sample:
        """The request as a sample with its images checked and decoded (so that a bad image
        fails before any generation, not halfway through a batch)."""
        sample = request_sample(request)
        resolved = resolve_images(sample.images, request.where, allow_urls=self.allow_urls)
        sample.images = [load_image(ref, request.where) for ref in resolved]
        return sample

    def prompt_tokens(self, request: Request) -> int:
        """How many tokens the request's prompt is as generation encodes it (chat template,
        text and visual tokens; `Generated.prompt_tokens` of its answer), without generating."""
        sample = self._sample(request)
        text = self.processor.render(prompt_messages(sample), add_generation_prompt=True)
        return len(self.processor.at_bounds(sample.pixel_bounds).encode(text, sample.images).input_ids)

    def answer(self, requests: list[Request], settings: GenerationSettings | None = None,
               batch_size: int = 8) -> list[str]:
        """The answer to each request (whole text, stripped), `batch_size` requests per
        `generate` call. A bad image or prompt raises RowError (an MmloraError) naming the
        request's `where`, before anything is generated."""
        return [generated.text for generated in self.generate(requests, settings, batch_size)]

    def generate(self, requests: list[Request], settings: GenerationSettings | None = None,
                 batch_size: int = 8) -> list[Generated]:
        """`answer` with each answer's token counts (prompt with its visual tokens, completion)
        and whether the model ended its turn, as the generation produced them."""
        from mmlora.evaluation.generate import generate_outputs

        settings = settings or GenerationSettings()
        samples = [self._sample(request) for request in requests]
        with self._lock:
            self._seed(settings)
            return generate_outputs(self.model, self.processor, samples, batch_size,
                                    first_line=False, settings=settings.generate_kwargs())

    def stream(self, request: Request, settings: GenerationSettings | None = None,
               usage: Generated | None = None) -> Iterator[str]:
        """The answer to one request as text chunks, as they are generated; joined, they are the
        text `answer` returns (whitespace at either end left out). Beam search cannot stream:
        num_beams must be 1. A stream left unread still generates to its end (holding the
        engine's lock) before the next call runs. `usage`, when given, receives the answer's
        text and token counts (as `generate` gives them) once the stream has ended."""
        from transformers import TextIteratorStreamer

        from mmlora.evaluation.generate import generate_outputs

        settings = settings or GenerationSettings()
        if settings.num_beams != 1:
            raise RowError("bad_row", "streaming needs num_beams=1 (beam search decides at the end)", request.where)
        sample = self._sample(request)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        done: list[Generated] = []

        def run() -> None:
            try:
                with self._lock:
                    self._seed(settings)
                    done.extend(generate_outputs(self.model, self.processor, [sample], 1, first_line=False,
                                                 settings={**settings.generate_kwargs(), "streamer": streamer}))
            except BaseException as err:  # noqa: BLE001 - handed to the reading thread below
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        started, held = False, ""  # stripped as `answer` strips: leading spaces dropped, trailing held back
        for chunk in streamer:
            text = held + chunk if started else chunk.lstrip()
            started = started or bool(text)
            body = text.rstrip()
            held = text[len(body):]
            if body:
                yield body
        worker.join()
        if failure:
            raise failure[0]
        if usage is not None:
            for name, value in vars(done[0]).items():
                setattr(usage, name, value)

    @staticmethod
    def _seed(settings: GenerationSettings) -> None:
        if settings.seed is not None:
            from transformers import set_seed

            set_seed(settings.seed)
