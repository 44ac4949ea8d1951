"""data.streaming: training data read as it comes, for sets too big to pre-scan.

Nothing of data.train is read before training starts. Each row is checked when training reaches
it, with the pre-scan's own checks: row format and fields, every image opened (decoded with
data.image_check=decode, header only with header), the sample encoded at its source's
resolution and fitted to data.max_length (dropped or truncated as data.too_long says). A bad row
stops training under data.on_error=raise (named: file or hub id, row, reason); under skip it is
dropped, and skips are counted by reason in the log as they come. What is not known up front:
how many rows are bad, how many samples there are (so train.max_steps is required), and lengths
(so no data.group_by_length). data.eval is still pre-scanned.

A mixture draws each next sample's source by weight (relative probability) and restarts a
source that runs out, so training runs until train.max_steps. DataLoader workers each take every
k-th row; accelerate gives each rank its share of every batch (IterableDatasetShard).
"""

from __future__ import annotations

import collections
import logging
import random

import torch

from mmlora.config.sources import DataSource, recipe_sources
from mmlora.data.collate import encode_for_training
from mmlora.data.loading import ImageChecker, iter_samples
from mmlora.data.samples import RowError
from mmlora.errors import MmloraError

log = logging.getLogger(__name__)

FULL_REPORTS = 10
"""Skips logged in full; after that one count line per `COUNT_EVERY` skips."""
COUNT_EVERY = 100


class SkipLog:
    """Counts skipped rows by reason and logs them as they come."""

    def __init__(self, on_error: str):
        self.on_error, self.counts = on_error, collections.Counter()

    def skip(self, problem: RowError) -> None:
        if self.on_error == "raise" and problem.reason != "too_long":
            raise MmloraError(f"{problem} (set data.on_error=skip to skip bad rows)")
        self.counts[problem.reason] += 1
        total = sum(self.counts.values())
        if total <= FULL_REPORTS:
            log.warning("streaming: skipping %s (%d skipped so far: %s)", problem, total, self.summary())
        elif total % COUNT_EVERY == 0:
            log.warning("streaming: %d rows skipped so far: %s", total, self.summary())

    def summary(self) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))


class StreamingDataset(torch.utils.data.IterableDataset):
    """data.train as encoded training examples, checked as they come (module docstring)."""

    def __init__(self, value, processor, cfg, seed: int):
        self.sources = recipe_sources(value, "data.train") or [value]
        self.processor, self.cfg, self.seed, self.epoch = processor, cfg, seed, 0
        self.skips = SkipLog(cfg.on_error)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds the mixture's draw and caption draws (called as for TrainingDataset)."""
        self.epoch = int(epoch)

    def _rows(self):
        """(source index, RowResult) in training order: one pass for one source; a weighted,
        endless draw for a mixture."""
        if len(self.sources) == 1:
            for result in self._one_pass(0):
                yield 0, result
            return
        draw = random.Random(f"{self.seed}:stream:{self.epoch}")
        streams = [self._endless(i) for i in range(len(self.sources))]
        weights = [source.weight for source in self.sources]
        while True:
            i = draw.choices(range(len(streams)), weights)[0]
            yield i, next(streams[i])

    def _endless(self, i: int):
        while True:
            yield from self._one_pass(i)

    def _one_pass(self, i: int):
        """One pass over source i; MmloraError when it held no usable row (a mixture would draw
        it forever; a single source would end training at step 0 with nothing learned)."""
        source, usable = self.sources[i], False
        for result in iter_samples(source, self.cfg, expand_captions=True):
            usable = usable or result.problem is None
            yield result
        if not usable:
            named = f"{source.label} ({source.display})" if isinstance(source, DataSource) else "data.train"
            raise MmloraError(f"{named}: no usable row in a whole pass ({self.skips.summary() or 'no rows'}); "
                              "fix or remove it (`mmlora data check RECIPE` lists every bad row).")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        check = ImageChecker(decode=self.cfg.image_check == "decode")
        for position, (_, result) in enumerate(self._rows()):
            if position % workers != worker:
                continue
            if result.problem is not None:
                self.skips.skip(result.problem)
                continue
            for sample in result.samples:
                example = self._example(sample, check, result.where, position)
                if example is not None:
                    yield example

    def _example(self, sample, check, where: str, position: int):
        try:
            for ref in sample.images:
                check(ref)
            if sample.answer_options:
                draw = random.Random(f"{self.seed}:{self.epoch}:{position}")
                sample = sample.with_final_answer(draw.choice(sample.answer_options))
            return encode_for_training(self.processor, sample, self.cfg.max_length, self.cfg.train_on,
                                       self.cfg.too_long == "truncate")
        except RowError as err:
            self.skips.skip(err.at(where))
        except MmloraError as err:  # the family's template refuses this conversation
            self.skips.skip(RowError("bad_row", str(err), where))
        except (TypeError, ValueError, UnicodeError) as err:  # the tokenizer refuses the text
            self.skips.skip(RowError("bad_row", f"the processor cannot encode this row ({type(err).__name__}: "
                                                f"{err})", where))
        return None
