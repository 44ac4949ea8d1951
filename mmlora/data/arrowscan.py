"""The pre-scan of a data file or folder on Arrow: parallel, cached, flat in memory.

1. The main process reads the raw rows (sources.py's readers, with their located errors) into
   an Arrow file: one record per row, the row as JSON, image bytes beside it. A JSON Lines
   file's lines are stored as they are (jsonrows.RawLine) and parsed in step 2's processes.
2. `datasets.Dataset.map` runs `RowScanner` over that file in batches, in `data.num_proc`
   processes: each row is converted, its images checked and its samples measured by the same
   code as the single-process scan (splitscan.scan_row, with fastmeasure.MeasuringProcessor),
   into a scan of that row alone, stored as columns.
3. The result folder is named by a fingerprint (scanstore.fingerprint) under the cache root;
   `load_result` concatenates the row scans in row order into a SplitScan whose samples are
   read from the memory-mapped file on access (scanstore.ArrowSamples).

A second scan of unchanged data (same files, data fields, processor; no image file changed) only
runs step 3. Under multi-process training the first process of each machine scans and the others
wait for its result and read it.
"""

from __future__ import annotations

import array
import atexit
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from mmlora.data.cache_entries import mark_used
from mmlora.data.fastmeasure import MeasuringProcessor
from mmlora.data.jsonrows import RawLine, parse_line
from mmlora.data.loading import ImageChecker, RowResult, open_rows, row_result
from mmlora.data.samples import RowError
from mmlora.data.scan_guards import cache_usable, killed_process_error, read_or_discard, unwritable
from mmlora.data.scan_seal import intact, seal
from mmlora.data.scan_wait import Heartbeat, mark_serial, remove_leftovers, wait_for_first_process
from mmlora.data.scanstore import (
    ArrowSamples, cache_root, file_stat, encode_sample, fingerprint, images_unchanged, processor_identity, read_arrow,
)
from mmlora.data.splitscan import SplitScan, VisualTokenCounter, scan_row
from mmlora.models.families.base import ImageTokens

log = logging.getLogger(__name__)
BLOB = "\0mmlora-blob"
"""Key of the JSON object standing for bytes in a raw row (Parquet / Arrow image bytes)."""
ROWS_PER_PROCESS = 1000
"""data.num_proc auto starts one process per this many rows (up to the cores): a process costs
about a second to start, which a small split does not win back."""


def scan_num_proc(requested: int, rows: int) -> int:
    """Processes for a scan: data.num_proc when set (> 0), else one per core, fewer for small splits."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8, rows // ROWS_PER_PROCESS))


def scan_arrow(source, cfg, processor, name: str, expand_captions: bool, progress: bool,
               bounds: tuple[int | None, int | None] | None = None) -> SplitScan | None:
    """The SplitScan of a data file or folder (module docstring); None when a row holds a value
    JSON cannot carry (the caller then scans in one process). `processor` is the one at the
    source's pixel `bounds` (a mixture's source), which its samples carry (Sample.pixel_bounds)."""
    path = Path(source)
    key = fingerprint(path, cfg, processor_identity(processor), name, expand_captions, bounds)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by torchrun / accelerate launch / deepspeed
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    shared = cfg.scan_cache or local_world > 1  # ranks share the result through the cache even when it is off
    final = cache_root() / key
    if shared:
        found = load_result(final, name, source, cfg.max_length)
        if found is not None:
            log.info("%s data: unchanged since its last scan, read from %s", name, final)
            return found
        shared = cache_usable(cache_root())  # else every process scans without it (one warning)
        if shared and local_rank != 0:
            done, found = wait_for_first_process(final, name, lambda: load_result(final, name, source, cfg.max_length))
            if done:
                return found
            shared = False  # it stopped without a result (warned): scan here, without the cache
    stale = (final / "scan.json").is_file()
    if shared:
        remove_leftovers(final)
    try:
        work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=_made(cache_root()) if shared else None))
    except OSError as error:
        unwritable(cache_root() if shared else Path(tempfile.gettempdir()), error, None)
        return None
    kept, beat = False, Heartbeat(work).start() if shared else None  # the waiting ranks see it is alive
    try:
        if not _scan_into(work, source, cfg, processor, name, expand_captions, progress, bounds):
            if shared:  # tells the other ranks to scan in one process too
                mark_serial(final)
            return None
        seal(work)
        if not shared:  # read from until this process ends
            atexit.register(shutil.rmtree, work, True)
            kept = True
            return load_result(work, name, source, cfg.max_length)
        if stale:  # an image changed since that scan
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(work, final)
        except OSError:  # another machine's first process, sharing this folder, was faster
            pass
        return load_result(final, name, source, cfg.max_length)
    except OSError as error:  # a full disk, a folder gone read-only: scan in one process instead
        unwritable(work.parent, error, final.with_suffix(".serial") if shared else None)
        return None
    except RuntimeError as error:  # datasets' map when one of its processes was killed
        raise killed_process_error(error, source) or error
    finally:
        if beat:
            beat.stop()
        if not kept:
            shutil.rmtree(work, ignore_errors=True)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _scan_into(work: Path, source, cfg, processor, name: str, expand_captions: bool, progress: bool,
               bounds) -> bool:
    """Steps 1 and 2 into `work`; False when a raw row cannot be stored as JSON."""
    import datasets

    opened, column_map, rows = open_rows(str(source), cfg, raw=True)
    if not write_rows(work / "rows.arrow", rows, name, progress):
        return False
    table = datasets.Dataset.from_file(str(work / "rows.arrow"))
    scanner = RowScanner(processor, cfg, column_map, replace(opened, rows=()), expand_captions, name, bounds)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    show = progress and sys.stderr.isatty()  # a bar on a terminal only, as the scan's own
    if not show:
        datasets.disable_progress_bars()
    # Everything alive now (torch, transformers, the processor) is moved out of the collector's
    # reach before the workers fork: a full collection in a worker would otherwise touch every
    # inherited object and so copy the pages they share with this process (+100 MiB per worker,
    # seen at 50k rows).
    gc.freeze()
    try:
        # 1024 rows a batch: `datasets`' own per-batch work and each batch's collector pause
        # (RowScanner.__call__) cost ~6 CPU-s at 50k rows with 256; with 2048 nothing more is
        # gained and peak memory grows (bench/README.md).
        table.map(scanner, batched=True, batch_size=1024, num_proc=_num_proc(cfg, len(table)), features=out_features(),
                  remove_columns=table.column_names, cache_file_name=str(work / "scan.arrow"),
                  load_from_cache_file=False, new_fingerprint=work.name, desc=f"checking {name} data")
    finally:
        gc.unfreeze()
        if bars and not show:
            datasets.enable_progress_bars()
    if not len(table):  # no rows: map writes no file; an empty result has the columns all the same
        import pyarrow as pa

        schema = out_features().arrow_schema
        with pa.OSFile(str(work / "scan.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema):
            pass
    files = sorted(p.name for p in work.glob("scan*.arrow"))
    import pyarrow.compute as pc

    result = read_arrow([work / f for f in files])
    # Flattened in Arrow: a Python list per row (mostly empty) cost ~0.1 s at 50k rows.
    images = {path: identity for entry in pc.list_flatten(result.column("files")).to_pylist()
              for path, *identity in [json.loads(entry)]}
    for folder in {opened.root, *(Path(p).parent for p in images)}:
        images[str(folder)] = file_stat(folder)  # an image added to or removed from a folder
    expansions = pc.list_flatten(result.column("expansions")).to_pylist()
    del result
    (work / "rows.arrow").unlink()
    meta = {"files": files, "images": images, "expansions": expansions, "source": os.path.abspath(source), "split": name}
    (work / "scan.json").write_text(json.dumps(meta))  # written last: its presence marks a whole result
    return True


def _num_proc(cfg, rows: int) -> int | None:
    procs = scan_num_proc(getattr(cfg, "num_proc", 0), rows)
    return procs if procs > 1 else None


def write_rows(path: Path, rows, name: str, progress: bool) -> bool:
    """Step 1: raw rows as Arrow records (where, row JSON or the reader's error, image bytes,
    whether the JSON is a data file's line not parsed yet)."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    schema = pa.schema([("where", pa.string()), ("row", pa.string()), ("reason", pa.string()),
                        ("detail", pa.string()), ("blobs", pa.list_(pa.binary())), ("line", pa.bool_())])
    columns = {field: [] for field in schema.names}
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for where, row in tqdm(rows, desc=f"reading {name} data", unit=" rows", disable=None if progress else True):
            blobs, line = [], isinstance(row, RawLine)
            if line:
                text, reason, detail = str(row), None, None
            elif isinstance(row, RowError):
                text, reason, detail = None, row.reason, row.detail
            else:
                try:
                    text, reason, detail = json.dumps(row, default=_blob_saver(blobs)), None, None
                except (TypeError, ValueError):
                    return False
            for field, value in zip(schema.names, (where, text, reason, detail, blobs, line)):
                columns[field].append(value)
            if len(columns["where"]) >= 1000:  # memory stays flat in the number of rows
                writer.write_batch(pa.record_batch(columns, schema=schema))
                columns = {field: [] for field in schema.names}
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return True


def _blob_saver(blobs: list[bytes]):
    def save(value):
        if isinstance(value, (bytes, bytearray)):
            blobs.append(bytes(value))
            return {BLOB: len(blobs) - 1}
        raise TypeError(type(value).__name__)

    return save


def _raw_row(text: str, blobs: list[bytes], line: bool):
    """The raw row step 1 stored: a data file's line parsed as the reader would (a RowError
    when it is not JSON), else the row's JSON with its bytes put back."""
    if line:
        try:
            return parse_line(text)
        except RowError as err:
            return err
    if not blobs:  # no bytes to put back: the plain (faster) parse
        return json.loads(text)
    return json.loads(text, object_hook=lambda d: blobs[d[BLOB]] if BLOB in d and len(d) == 1 else d)


class RowScanner:
    """Step 2, the `Dataset.map` function: each row's scan as columns (module docstring)."""

    def __init__(self, processor, cfg, column_map, opened, expand_captions: bool, name: str, bounds=None):
        self.processor, self.cfg, self.column_map, self.opened = processor, cfg, column_map, opened
        self.bounds, self.schema = bounds, None
        self.expand_captions, self.name, self.tools, self.seen, self.resolved = expand_captions, name, None, set(), {}

    def __getstate__(self):  # a fresh worker builds its own caches
        return {**self.__dict__, "tools": None, "seen": set(), "resolved": {}, "schema": None}

    def __call__(self, batch: dict) -> dict:
        # The cyclic garbage collector paused for the batch: a row allocates thousands of small
        # objects (token offsets, memo entries), which set off collections that traverse the
        # whole heap of the process (torch, transformers), ~17% of a worker's CPU time. The few
        # cycles a batch leaves are collected once it is back on: memory stays flat.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._scan_batch(batch)
        finally:
            if paused:
                gc.enable()

    def _scan_batch(self, batch: dict) -> dict:
        if self.tools is None:
            self.tools = (MeasuringProcessor(self.processor), ImageChecker(decode=self.cfg.image_check == "decode"),
                          VisualTokenCounter(self.processor))
        out = {column: [] for column in OUT_COLUMNS}
        for where, text, reason, detail, blobs, line in zip(*(batch[c] for c in ("where", "row", "reason", "detail",
                                                                               "blobs", "line"))):
            if text is None:
                result = RowResult(where, problem=RowError(reason, detail, where))
            else:
                result = row_result(where, _raw_row(text, blobs, line), self.cfg, self.column_map, self.opened,
                                    self.expand_captions, self.resolved)
                for sample in result.samples:  # as loading.iter_samples gives a mixture's source
                    sample.pixel_bounds = self.bounds
            part = SplitScan(self.name, "", self.cfg.max_length)
            files = self._new_files(result)
            measuring, inspect, count_tokens = self.tools
            scan_row(part, result, measuring, self.cfg, inspect, count_tokens)
            for column, value in self._columns(part, files).items():
                out[column].append(value)
        # As an Arrow table of the declared types: `datasets` then writes it as it is, instead of
        # inspecting and converting every value of a dict of lists.
        return self.schema_table(out)

    def schema_table(self, columns: dict):
        import pyarrow as pa

        if self.schema is None:
            self.schema = out_features().arrow_schema
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _new_files(self, result: RowResult) -> list[str]:
        """[path, size, mtime] of image files this process meets for the first time."""
        new = []
        for sample in result.samples:
            for ref in sample.images:
                if isinstance(ref, Path) and str(ref) not in self.seen:
                    self.seen.add(str(ref))
                    new.append(json.dumps([str(ref), *file_stat(ref)]))
        return new

    def _columns(self, part: SplitScan, files: list[str]) -> dict:
        blobs, expansions, keys = [], [], []
        for counts in part.image_tokens:
            keys.append([self._expansion_key(count, expansions) for count in counts])
        return {
            "p_reason": [p.reason for p in part.problems], "p_detail": [p.detail for p in part.problems],
            "p_where": [p.where for p in part.problems],
            "t_detail": [p.detail for p in part.too_long], "t_where": [p.where for p in part.too_long],
            "samples": json.dumps([encode_sample(s, blobs) for s in part.samples]), "blobs": blobs,
            "counts": [[int(c) for c in counts] for counts in part.image_tokens], "expand": keys,
            "expansions": expansions, "lengths": part.lengths,
            "widths": [w for w, _ in part.image_sizes], "heights": [h for _, h in part.image_sizes],
            "visual": [int(c) for c in part.visual_tokens], "padded": part.padded_images,
            "truncated": part.truncated, "kept": part.kept_tokens, "trained": part.trained_tokens, "files": files,
        }

    def _expansion_key(self, count, expansions: list[str]) -> str | None:
        """Counts that carry their expansion text (ImageTokens) are stored as the text's hash;
        each text once per process, in the "expansions" column."""
        text = getattr(count, "text", None)
        if text is None:
            return None
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        if key not in self.seen:
            self.seen.add(key)
            expansions.append(text)
        return key


OUT_COLUMNS = ("p_reason", "p_detail", "p_where", "t_detail", "t_where", "samples", "blobs", "counts", "expand",
               "expansions", "lengths", "widths", "heights", "visual", "padded", "truncated", "kept", "trained",
               "files")
PER_ROW = ("p_reason", "p_detail", "p_where", "t_detail", "t_where", "counts", "expand", "lengths", "widths",
           "heights", "visual", "padded", "truncated", "kept", "trained")
PER_ROW_NUMBERS = ("padded", "truncated", "kept", "trained")
"""Per-row counts (summed over the split); the other PER_ROW columns are lists (concatenated)."""


def out_features():
    """The columns RowScanner writes (declared: a batch whose lists are all empty has no type to infer)."""
    from datasets import Features, List, Value

    text, number = Value("string"), Value("int64")
    lists = {"p_reason": text, "p_detail": text, "p_where": text, "t_detail": text, "t_where": text,
             "blobs": Value("binary"), "counts": List(number), "expand": List(text), "expansions": text,
             "lengths": number, "widths": number, "heights": number, "visual": number, "files": text}
    return Features({"samples": text, **{c: List(v) for c, v in lists.items()},
                     **{c: number for c in ("padded", "truncated", "kept", "trained")}})


def load_result(folder: Path, name: str, source, max_length: int) -> SplitScan | None:
    """Step 3: the SplitScan stored in `folder`, or None when there is none, an image changed, or
    it is damaged (then logged and deleted: scan_guards.read_or_discard)."""
    return read_or_discard(folder, lambda path: _read_result(path, name, source, max_length))


def _read_result(folder: Path, name: str, source, max_length: int) -> SplitScan | None:
    import numpy as np
    import pyarrow.compute as pc

    meta_path = folder / "scan.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if not images_unchanged(meta["images"]) or not intact(folder, meta):  # damaged: raises (read_or_discard)
        return None
    mark_used(meta_path)  # `mmlora cache clear --older-than` goes by when an entry was last read
    texts = {hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest(): t for t in meta["expansions"]}
    files = [folder / f for f in meta["files"]]
    # Whole columns at once (a Python loop per row cost seconds at 50k rows); rows stay in order.
    table = read_arrow(files).select(list(PER_ROW))
    flat = {c: pc.list_flatten(table.column(c)).to_pylist() for c in PER_ROW if c not in PER_ROW_NUMBERS}
    scan = SplitScan(name, str(source), max_length, rows=table.num_rows)
    scan.problems = [RowError(*p) for p in zip(flat["p_reason"], flat["p_detail"], flat["p_where"])]
    scan.too_long = [RowError("too_long", d, w) for d, w in zip(flat["t_detail"], flat["t_where"])]
    scan.image_tokens = flat["counts"] if not texts else [
        [ImageTokens(c, texts[key]) if key else c for c, key in zip(counts, keys)]
        for counts, keys in zip(flat["counts"], flat["expand"])]
    scan.lengths, scan.visual_tokens = flat["lengths"], flat["visual"]
    scan.image_sizes = list(zip(flat["widths"], flat["heights"]))
    scan.padded_images, scan.truncated, scan.kept_tokens, scan.trained_tokens = (
        int(pc.sum(table.column(c)).as_py() or 0) for c in PER_ROW_NUMBERS)
    # sample i: the positions[i]-th usable sample of row rows[i]
    per_row = pc.list_value_length(table.column("counts")).to_numpy(zero_copy_only=False).astype(np.int64)
    row_of = np.repeat(np.arange(len(per_row), dtype=np.int64), per_row)
    position = np.arange(len(row_of), dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    rows, positions = array.array("q", row_of.tobytes()), array.array("q", position.tobytes())
    scan.samples = ArrowSamples(files, rows, positions)
    return scan
