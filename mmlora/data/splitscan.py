"""What the pre-scan learns about a split (`SplitScan`) and how one row is checked (`scan_row`).

Shared by the single-process scan (scan.scan_split on in-memory sources and previews) and the
parallel Arrow scan (arrowscan.py), whose workers run `scan_row` on each row into a scan of
that row alone and whose results are concatenated in row order: both paths run the same code.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from mmlora.config.sources import DataSource
from mmlora.data.collate import IGNORE_INDEX, answer_labels, fit_length, image_tokens_end, tokenize_text
from mmlora.data.images import ImageInfo
from mmlora.data.loading import RowResult
from mmlora.data.samples import RowError, Sample
from mmlora.errors import MmloraError


class VisualTokenCounter:
    """Visual tokens an image of a given size becomes, computed without its pixels.

    Fast path: the image processor's own `get_number_of_image_patches` (Qwen-VL's smart_resize
    rule) divided by its patch merge. It is used only after it matched the processor's real
    output on probe sizes, expansion text included; otherwise (other families: tiles, fixed
    sizes, markers) each distinct size is measured once on a blank image.
    """

    PROBES = ((113, 97), (640, 480), (20, 500), (3000, 2000))

    def __init__(self, processor):
        self.processor, self.cache = processor, {}
        placeholder = processor.family.image_token
        try:
            measured = [self._measured(w, h) for w, h in self.PROBES]
            self.fast = all(
                self._rule(w, h) == m and getattr(m, "text", placeholder * m) == placeholder * m
                for (w, h), m in zip(self.PROBES, measured)
            )
        except Exception:  # noqa: BLE001 - no such method, or another rule: measure each size
            self.fast = False

    def __call__(self, width: int, height: int) -> int:
        key = (width, height)
        if key not in self.cache:
            self.cache[key] = self._rule(width, height) if self.fast else self._measured(width, height)
        return self.cache[key]

    def _rule(self, width: int, height: int) -> int:
        image_processor = self.processor.image_processor
        return image_processor.get_number_of_image_patches(height, width) // image_processor.merge_size**2

    def _measured(self, width: int, height: int):
        from PIL import Image

        blank = Image.new("RGB", (width, height))
        return self.processor.encode(self.processor.family.image_token, [blank]).image_token_counts[0]


@dataclass
class SplitScan:
    """Everything the pre-scan learned about one split."""

    name: str
    source: str
    max_length: int
    rows: int = 0
    problems: list[RowError] = field(default_factory=list)
    """Bad rows (skipped with on_error=skip, fatal with raise)."""
    too_long: list[RowError] = field(default_factory=list)
    """Samples dropped because they do not fit max_length."""
    samples: list[Sample] = field(default_factory=list)
    """Usable samples, as training will see them."""
    image_tokens: list[list[int]] = field(default_factory=list)
    """Visual tokens per image of each usable sample."""
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)
    """Tokens of every sample that passed the row checks, before max_length applies."""
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    visual_tokens: list[int] = field(default_factory=list)
    padded_images: int = 0
    kept_tokens: int = 0
    trained_tokens: int = 0
    data_source: DataSource | None = None
    """The recipe entry scanned (its weight and pixel bounds), when the split names one."""
    parts: list["SplitScan"] = field(default_factory=list)
    """A mixture's per-source scans, in order (mmlora/data/mixture.py); empty for one source."""

    def skipped(self) -> dict[str, int]:
        """Bad rows by reason."""
        return dict(sorted(collections.Counter(p.reason for p in self.problems).items()))


def _measure(processor, sample: Sample, counts: list[int], cfg) -> tuple[int, list[int] | None]:
    """(length before max_length, labels after it or None when the sample must be dropped)."""
    ids, offsets = tokenize_text(processor, sample.messages, counts)
    labels = answer_labels(processor, sample.messages, counts, ids, offsets, cfg.train_on)
    truncate = cfg.too_long == "truncate"
    # fit_length reads `keep` only to truncate a sample that is too long: found only then
    keep = image_tokens_end(processor, sample.messages, counts, offsets) \
        if truncate and len(ids) > cfg.max_length else 0
    fitted = fit_length(ids, labels, cfg.max_length, truncate, keep)
    return len(ids), (fitted[1] if fitted else None)


def scan_row(scan: SplitScan, result: RowResult, processor, cfg, inspect, count_tokens) -> None:
    """Add one row (a loading.RowResult) to `scan`: its images checked with `inspect` (an
    ImageChecker), each sample measured (`count_tokens`: a VisualTokenCounter); a bad row or
    sample becomes a located problem, never an exception."""
    scan.rows += 1
    if result.problem is None:
        try:
            infos = [[inspect(ref) for ref in sample.images] for sample in result.samples]
        except RowError as err:
            result.problem = err.at(result.where)
    if result.problem is not None:
        scan.problems.append(result.problem)
        return
    for sample, sample_infos in zip(result.samples, infos):
        try:
            _add_sample(scan, processor, cfg, sample, sample_infos, count_tokens)
        except RowError as err:
            scan.problems.append(err.at(result.where))
        except MmloraError as err:  # e.g. the family's template refuses this conversation
            scan.problems.append(RowError("bad_row", str(err), result.where))
        except (TypeError, ValueError, UnicodeError) as err:  # the tokenizer or template refuses the text
            scan.problems.append(RowError("bad_row", f"the {processor.family.name} processor cannot encode this "
                                                     f"row ({type(err).__name__}: {err})", result.where))


def _add_sample(scan: SplitScan, processor, cfg, sample: Sample, infos: list[ImageInfo], count_tokens) -> None:
    counts = [count_tokens(info.width, info.height) for info in infos]
    measured = []
    for option in sample.answer_options or [None]:
        variant = sample if option is None else sample.with_final_answer(option)
        measured.append((option, *_measure(processor, variant, counts, cfg)))
    scan.image_sizes += [(info.width, info.height) for info in infos]
    scan.visual_tokens += counts
    scan.padded_images += sum(info.padded for info in infos)
    scan.lengths.append(measured[0][1])
    fitting = [(option, length, labels) for option, length, labels in measured if labels is not None]
    if not fitting:
        scan.too_long.append(RowError("too_long", f"{measured[0][1]} tokens (with {sum(counts)} visual) do "
                                                  f"not fit data.max_length={cfg.max_length}", sample.source))
        return
    if sample.answer_options:
        sample.answer_options = [option for option, _, _ in fitting]
    _, length, labels = fitting[0]
    scan.truncated += length > cfg.max_length
    scan.kept_tokens += len(labels)
    scan.trained_tokens += len(labels) - labels.count(IGNORE_INDEX)
    scan.samples.append(sample)
    scan.image_tokens.append(counts)
