"""The pre-scan: every row, image and token count checked before training starts.

Bad rows are found here, not mid-epoch: each image is opened once (decoded with
data.image_check=decode, header only with header), its visual-token count comes from the
processor's resize rule applied to the header size (no pixels processed), and the text is
tokenised with the chat template to measure length and trained tokens. Over-long samples are
dropped or truncated here, so training never meets a sample that does not fit.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from mmlora.config.sources import DataSource, recipe_sources
from mmlora.data.arrowscan import scan_arrow
from mmlora.data.collate import encode_for_training
from mmlora.data.loading import ImageChecker, iter_samples, local_path, located
from mmlora.data.mixture import combine_scans, epoch_order
from mmlora.data.streaming import StreamingDataset
from mmlora.data.scan_cache import scan_cache_note
from mmlora.data.samples import REASONS, RowError, Sample
from mmlora.data.splitscan import SplitScan, VisualTokenCounter, scan_row
from mmlora.errors import MmloraError


def scan_split(source, cfg, processor, name: str = "train", expand_captions: bool = True,
               progress: bool = True, limit: int | None = None) -> SplitScan:
    """Check every row of `source` (see module docstring); never raises for a bad row.
    `limit`: stop once that many usable samples were found (for previews; per source of a mixture).
    A mixture (data.train as a list) is scanned source by source, each at its own pixel bounds."""
    sources = recipe_sources(str(source) if isinstance(source, Path) else source, f"data.{name}")
    if sources is not None and len(sources) > 1:
        parts = [_scan_source(s, cfg, processor, name, expand_captions, progress, limit) for s in sources]
        return combine_scans(SplitScan(name, f"a mixture of {len(sources)} sources", cfg.max_length), parts)
    return _scan_source(sources[0] if sources else source, cfg, processor, name, expand_captions, progress, limit)


def _scan_source(source, cfg, processor, name: str, expand_captions: bool, progress: bool,
                 limit: int | None) -> SplitScan:
    """One source: a local file or folder (limit None) on Arrow in several processes, cached
    (data/arrowscan.py), at the source's own pixel bounds; hub datasets, data in memory, previews
    and rows JSON cannot carry in this process (`scan_serially`)."""
    if isinstance(source, DataSource) and not source.hub and limit is None:
        bounds = source.bounds()
        with located(source):
            scan = scan_arrow(local_path(source), source.data_config(cfg), processor.at_bounds(bounds), name,
                              expand_captions, progress, bounds)
        if scan is not None:
            scan.source, scan.data_source = source.display, source
            note = scan_cache_note() if source.data_config(cfg).scan_cache else None
            if note:  # stderr: `mmlora data check --json` keeps stdout for its JSON
                print(note, file=sys.stderr)
            return scan
    return scan_serially(source, cfg, processor, name, expand_captions, progress, limit)


def scan_serially(source, cfg, processor, name: str = "train", expand_captions: bool = True,
                  progress: bool = True, limit: int | None = None) -> SplitScan:
    """The single-process scan of one source (a path, a `DataSource`, or data in memory): hub
    datasets, previews, and the reference the Arrow scan is tested against."""
    from tqdm.auto import tqdm

    if isinstance(source, (str, Path)):  # one recipe entry, named as scan_split names it
        source = recipe_sources(str(source), f"data.{name}")[0]
    entry = source if isinstance(source, DataSource) else None
    scan = SplitScan(name, entry.display if entry else str(source), cfg.max_length, data_source=entry)
    # Visual tokens at the source's own resolution (Sample.pixel_bounds), as training encodes them.
    bounded = processor.at_bounds(entry.bounds() if entry else None)
    count_tokens, inspect = VisualTokenCounter(bounded), ImageChecker(decode=cfg.image_check == "decode")
    rows = iter_samples(source, cfg, expand_captions)
    for result in tqdm(rows, desc=f"checking {name} data", unit=" rows", disable=None if progress else True):  # None: no bar off a terminal
        scan_row(scan, result, processor, cfg, inspect, count_tokens)
        if limit is not None and len(scan.samples) >= limit:
            break
    return scan


def enforce_on_error(scan: SplitScan, on_error: str) -> None:
    """Stop before training when rows are bad and data.on_error=raise, or nothing is usable
    (in a mixture: in any one source, named)."""
    for part in scan.parts:
        enforce_on_error(part, on_error)
    if scan.problems and on_error == "raise":
        first, more = scan.problems[0], len(scan.problems) - 1
        others = f" (and {more} more bad row(s): {reason_counts(scan.skipped())})" if more else ""
        raise MmloraError(
            f"{first}{others}. Fix the data or set data.on_error=skip to skip bad rows; "
            "`mmlora data check RECIPE` lists them all."
        )
    if not scan.samples:
        named = f"{scan.data_source.label} ({scan.source})" if scan.data_source else scan.source
        raise MmloraError(f"{named}: no usable samples ({scan.rows} rows; bad: {reason_counts(scan.skipped())}; "
                          f"over data.max_length={scan.max_length}: {len(scan.too_long)}). {next_step(scan)}")


def reason_counts(counts: dict[str, int]) -> str:
    """`missing_image 2, not_utf8 1` (or `none`): counts by reason for a one-line message."""
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"


def next_step(scan: SplitScan) -> str:
    """What to change when a split has no usable sample, computed from what the scan measured."""
    if scan.rows == 0:
        return "The data has no rows: check the path in the recipe."
    if not scan.lengths:
        return ("Every row is bad: `mmlora data check RECIPE` lists each with its reason; fix those "
                "(the first: " + (str(scan.problems[0]) if scan.problems else "-") + ").")
    ordered = sorted(scan.lengths)
    return (f"The samples need {ordered[0]} to {ordered[-1]} tokens (median {ordered[len(ordered) // 2]}): set "
            f"data.max_length={ordered[-1]} to keep all of them (at least {ordered[0]} keeps the shortest), or "
            "lower model.max_pixels to give images fewer visual tokens.")


def summary_line(scan: SplitScan) -> str:
    """One line for the training log: rows, samples, and what was skipped or cut (a mixture's
    source: named by its recipe entry)."""
    named = f"{scan.data_source.label} ({scan.source})" if scan.data_source and not scan.parts and \
        scan.data_source.label.endswith("]") else f"{scan.name} data"
    parts = [f"{named}: {scan.rows} rows -> {len(scan.samples)} samples"]
    if scan.problems:
        reasons = ", ".join(f"{reason} {n}" for reason, n in scan.skipped().items())
        parts.append(f"skipped {len(scan.problems)} bad rows ({reasons})")
    if scan.too_long:
        parts.append(f"dropped {len(scan.too_long)} over data.max_length={scan.max_length}")
    if scan.truncated:
        parts.append(f"truncated {scan.truncated} to data.max_length={scan.max_length}")
    return "; ".join(parts)


def problem_list(problems: list[RowError], limit: int = 100) -> list[dict]:
    return [{"where": p.where, "reason": p.reason, "message": p.detail} for p in problems[:limit]]


def scan_report(scan: SplitScan) -> dict:
    """The counts a run writes to data_report.json (and `mmlora data check` extends)."""
    return {
        "split": scan.name,
        "source": scan.source,
        "rows": scan.rows,
        "samples": len(scan.samples),
        "skipped_rows": len(scan.problems),
        "skipped": scan.skipped(),
        "dropped_too_long": len(scan.too_long),
        "truncated": scan.truncated,
        "max_length": scan.max_length,
        "reasons": {reason: REASONS[reason] for reason in scan.skipped()},
        "problems": problem_list(scan.problems + scan.too_long),
        **({"sources": [source_report(part, scan_report) for part in scan.parts]} if scan.parts else {}),
    }


def source_report(part: SplitScan, report) -> dict:
    """`report(part)` of one source of a mixture, with its weight and its own pixel bounds."""
    entry = part.data_source
    return {**report(part), "weight": entry.weight, "min_pixels": entry.min_pixels, "max_pixels": entry.max_pixels}


class TrainingDataset:
    """Scanned samples, encoded on access (so image decoding runs in DataLoader workers)."""

    def __init__(self, scan: SplitScan, processor, cfg, seed: int, weighted: bool = True):
        self.samples, self.counts = scan.samples, scan.image_tokens
        self.processor, self.cfg, self.seed, self.epoch = processor, cfg, seed, 0
        # A mixture (weighted=True: training) draws each epoch's samples by source weight.
        self.mixture = ([len(p.samples) for p in scan.parts], [p.data_source.weight for p in scan.parts]) \
            if weighted and scan.parts else None
        self.order = epoch_order(*self.mixture, seed, 0) if self.mixture else None

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader (and EpochCallback): reseeds caption draws and a
        mixture's weighted draw (mmlora/data/mixture.py)."""
        self.epoch = int(epoch)
        if self.mixture:
            self.order = epoch_order(*self.mixture, self.seed, self.epoch)

    def __getitem__(self, position: int):
        # A mixture's epoch maps positions to samples; the caption draw follows the position, so a
        # sample drawn twice in one epoch may get two captions.
        index = self.order[position] if self.order is not None else position
        sample = self.samples[index]
        if sample.answer_options:
            draw = random.Random(f"{self.seed}:{self.epoch}:{position}")
            sample = sample.with_final_answer(draw.choice(sample.answer_options))
        return encode_for_training(self.processor, sample, self.cfg.max_length, self.cfg.train_on,
                                   self.cfg.too_long == "truncate", self.counts[index])


def epoch_callback(dataset: TrainingDataset):
    """A TrainerCallback telling the dataset each epoch, before its data loader (and workers) start;
    accelerate forwards set_epoch to datasets only on some sampler set-ups."""
    from transformers import TrainerCallback

    class SetEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            dataset.set_epoch(int(state.epoch or 0))

    return SetEpoch()


def load_data_processor(model_cfg):
    """The model's processor alone (tokenizer, image processor, chat template): no weights."""
    from mmlora.models.loading import _hub_kwargs, _source_dir, detect_family
    from mmlora.models.processor import load_processor

    family = detect_family(model_cfg.name, model_cfg)
    return load_processor(_source_dir(model_cfg.name), family, model_cfg.min_pixels, model_cfg.max_pixels,
                          **_hub_kwargs(model_cfg))


@dataclass
class TrainingData:
    dataset: "TrainingDataset | StreamingDataset"
    scan: SplitScan
    """The train split's pre-scan (empty with data.streaming)."""
    callbacks: list
    eval_scan: SplitScan | None = None
    """data.eval, pre-scanned like train (one sample per row): its usable samples are what the
    in-training evaluation uses."""
    eval_dataset: TrainingDataset | None = None

    def eval_parts(self) -> tuple[list[Sample] | None, "TrainingDataset | None"]:
        """(eval samples, eval-loss dataset) for TrainingEvaluation; (None, None) without data.eval."""
        if self.eval_scan is None:
            return None, None
        return self.eval_scan.samples, self.eval_dataset


def run_report(scan: SplitScan, eval_scan: SplitScan | None) -> dict:
    """data_report.json: the train split's counts at the top level, data.eval's under "eval"."""
    report = scan_report(scan)
    if eval_scan is not None:
        report["eval"] = scan_report(eval_scan)
    return report


def prepare_training_data(recipe, processor=None, report_dir: Path | None = None) -> TrainingData:
    """Pre-scan data.train and data.eval before any weights load or step runs: raise on bad rows
    (on_error=raise) or skip them, print what was skipped, dropped or truncated, and write
    data_report.json to report_dir. Eval is checked here, not at the first evaluation, so a bad
    or over-long eval row cannot stop a run after its first epoch."""
    import json

    processor = processor or load_data_processor(recipe.model)
    if recipe.data.streaming:  # nothing of data.train is read before training (mmlora/data/streaming.py)
        scan = SplitScan("train", "streamed: checked as training reaches each row", recipe.data.max_length)
    else:
        scan = scan_split(recipe.data.train, recipe.data, processor, "train")
        enforce_on_error(scan, recipe.data.on_error)
    eval_scan = None
    if recipe.data.eval:
        eval_scan = scan_split(recipe.data.eval, recipe.data, processor, "eval", expand_captions=False)
        enforce_on_error(eval_scan, recipe.data.on_error)
    if report_dir is not None:  # only the main process reports (see mmlora/training/train.py)
        for split in (scan, eval_scan):
            for part in ([split] + split.parts if split is not None else []):
                streamed = recipe.data.streaming and part is scan
                print("train data: streamed (data.streaming), each row checked when training reaches it; skips "
                      "are logged as they come" if streamed else ("  " if part is not split else "") + summary_line(part))
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "data_report.json").write_text(json.dumps(run_report(scan, eval_scan), indent=2) + "\n")
    dataset = StreamingDataset(recipe.data.train, processor, recipe.data, recipe.train.seed) if recipe.data.streaming \
        else TrainingDataset(scan, processor, recipe.data, recipe.train.seed)
    eval_dataset = eval_loss_dataset(eval_scan, processor, recipe.data) if eval_scan is not None else None
    return TrainingData(dataset, scan, [epoch_callback(dataset)], eval_scan, eval_dataset)


def eval_loss_dataset(eval_scan: SplitScan, processor, cfg) -> TrainingDataset:
    """The eval-loss dataset: scanned eval samples, encoded as training encodes them (same
    max_length, truncation and train_on), each with one fixed answer (the first caption that
    fits), so the eval loss is comparable from one evaluation to the next."""
    dataset = TrainingDataset(eval_scan, processor, cfg, seed=0, weighted=False)
    dataset.samples = [s.with_final_answer(s.answer_options[0]) if s.answer_options else s for s in eval_scan.samples]
    return dataset
