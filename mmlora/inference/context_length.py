"""Whether a request fits the model's context: its prompt as the model sees it (chat template,
text and every visual token) plus the longest answer asked for, against the positions the text
model was built for. Past them a model answers garbage (and a huge prompt holds its batch for
minutes), so `mmlora serve` refuses such a request with a 400, `mmlora infer` with a one-line
error, or a counted skip of its line in a batch, and `mmlora chat` says so and lets the user
start over.

The context is the text model's `max_position_embeddings` (`config.get_text_config()`: the
`text_config` of every supported family), the limit vLLM derives its default `max_model_len`
from. Qwen-VL's multimodal rotary positions advance less than one per visual token, so for
them the count is the stricter side: a prompt within it always fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlora.inference.engine import GenerationSettings, Request


@dataclass(frozen=True)
class ContextOverflow:
    """A request that does not fit: its prompt tokens and answer budget, and the context."""

    prompt_tokens: int
    max_new_tokens: int
    context: int

    def describe(self, answer_budget: str, what: str = "the prompt") -> str:
        """`the prompt takes N tokens (...) and <answer_budget> is K: more than the model's
        context of C tokens`, naming the caller's flag or field for the answer budget."""
        return (f"{what} takes {self.prompt_tokens} tokens (chat template and visual tokens included) and "
                f"{answer_budget} is {self.max_new_tokens}: more than the model's context of {self.context} tokens")


def model_context(config) -> int | None:
    """The positions the model's text decoder was built for (`max_position_embeddings` of its
    text config); None when the config does not say."""
    limit = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def context_overflow(engine, request: Request, settings: GenerationSettings) -> ContextOverflow | None:
    """The overflow of `request` with `settings.max_new_tokens` on `engine`'s model, or None when
    it fits (or the model states no context). Counts the prompt as generation encodes it."""
    context = model_context(engine.model.config)
    if context is None:
        return None
    tokens = engine.prompt_tokens(request)
    if tokens + settings.max_new_tokens > context:
        return ContextOverflow(tokens, settings.max_new_tokens, context)
    return None
