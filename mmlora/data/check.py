"""`mmlora data check` and `mmlora data preview`: what the data is, and what the model will see.

Both load the processor only (tokenizer, image processor, chat template), never the weights,
and use the training pre-scan (mmlora.data.scan), so what they report is what training does.
"""

from __future__ import annotations

import itertools
import json
import statistics

from mmlora.data.mixture import source_counts
from mmlora.data.collate import IGNORE_INDEX, answer_labels, fit_length, image_tokens_end, tokenize_text
from mmlora.data.scan import load_data_processor, scan_report, scan_split, source_report
from mmlora.data.splitscan import SplitScan


def distribution(values: list[int]) -> dict | None:
    """min / median / p95 / max of a list of numbers (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def split_stats(scan: SplitScan) -> dict:
    """The scan's counts plus image, visual-token and length distributions."""
    stats = scan_report(scan)
    stats["images"] = {
        "count": len(scan.image_sizes),
        "width": distribution([w for w, _ in scan.image_sizes]),
        "height": distribution([h for _, h in scan.image_sizes]),
        "visual_tokens": distribution(scan.visual_tokens),
        "padded_to_aspect_limit": scan.padded_images,
    }
    stats["sequence_length"] = distribution(scan.lengths)
    stats["trained_tokens"] = scan.trained_tokens
    stats["kept_tokens"] = scan.kept_tokens
    stats["trained_token_share"] = round(scan.trained_tokens / scan.kept_tokens, 4) if scan.kept_tokens else 0.0
    if scan.parts:  # a mixture: the same stats per source, with its weight and pixel bounds
        stats["sources"] = [source_report(part, split_stats) for part in scan.parts]
    return stats


def recipe_splits(recipe) -> list[tuple[str, str]]:
    return [(name, path) for name, path in (("train", recipe.data.train), ("eval", recipe.data.eval)) if path]


def check_recipe(recipe, processor=None, progress: bool = True) -> dict:
    """Scan every split of a recipe; per split, the stats of `split_stats`."""
    processor = processor or load_data_processor(recipe.model)
    return {
        name: split_stats(scan_split(path, recipe.data, processor, name, expand_captions=name == "train",
                                     progress=progress))
        for name, path in recipe_splits(recipe)
    }


def training_would_stop(report: dict, on_error: str) -> bool:
    """Bad rows under on_error=raise, or a split (or a mixture's source) with nothing usable."""
    return bool(stop_reasons(report, on_error))


def stop_reasons(report: dict, on_error: str) -> list[str]:
    """Why `mmlora train` would refuse this data, one line each (none: it would not)."""
    reasons = []
    for name, split in report.items():
        if split["skipped_rows"] and on_error == "raise":
            reasons.append(f"data.{name}: {split['skipped_rows']} bad row(s) and data.on_error=raise "
                           "(fix them, or set data.on_error=skip)")
        if not split["samples"]:
            reasons.append(f"data.{name}: no usable samples")
        reasons += [f"data.{name}[{i}] ({source['source']}): no usable samples (fix or remove it)"
                    for i, source in enumerate(split.get("sources", [])) if not source["samples"]]
    return reasons


def _dist(d: dict | None) -> str:
    return "-" if d is None else f"min {d['min']}  median {d['median']:g}  p95 {d['p95']}  max {d['max']}"


def format_check(report: dict) -> str:
    """The check report as text (a mixture: the split's totals, then each source with its weight,
    its draw per training epoch and its pixel bounds)."""
    lines = []
    for name, s in report.items():
        sources = s.get("sources", [])
        lines += _split_lines(f"{name}: {s['source']}", s, problems=not sources)
        draws = source_counts([p["weight"] for p in sources], s["samples"]) if sources and s["samples"] else []
        for i, source in enumerate(sources):
            pixels = "/".join("model" if source[k] is None else str(source[k]) for k in ("min_pixels", "max_pixels"))
            drawn = f", {draws[i]} per epoch" if draws and name == "train" else ""
            drawn = drawn if source["samples"] else ", nothing to draw"
            lines += ["  " + line for line in _split_lines(
                f"data.{name}[{i}]: {source['source']}  (weight {source['weight']:g}{drawn}; min/max_pixels {pixels})",
                source)]
    return "\n".join(lines)


def _split_lines(title: str, s: dict, problems: bool = True) -> list[str]:
    images = s["images"]
    lines = [
        title,
        f"  rows {s['rows']} -> usable samples {s['samples']}  (bad rows skipped {s['skipped_rows']}, "
        f"over max_length {s['max_length']}: dropped {s['dropped_too_long']}, truncated {s['truncated']})",
    ]
    if s["skipped"]:
        lines.append("  bad rows by reason: " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    lines += [
        f"  images {images['count']} (padded to the aspect limit: {images['padded_to_aspect_limit']})",
        f"    width          {_dist(images['width'])}",
        f"    height         {_dist(images['height'])}",
        f"    visual tokens  {_dist(images['visual_tokens'])}",
        f"  sequence length  {_dist(s['sequence_length'])}",
        f"  trained tokens   {s['trained_tokens']} of {s['kept_tokens']} ({100 * s['trained_token_share']:.1f}%)",
    ]
    shown = s["problems"][:20] if problems else []
    lines += [f"  {problem['where']}: [{problem['reason']}] {problem['message']}" for problem in shown]
    if problems and len(s["problems"]) > 20:
        lines.append(f"  ... {len(s['problems']) - 20} more (see --json)")
    return lines


def _runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """(start, end, trained) for each maximal run of trained / untrained tokens."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            runs.append((start, i, labels[start] != IGNORE_INDEX))
            start = i
    return runs


def preview_samples(recipe, n: int = 3, split: str = "train", processor=None) -> list[dict]:
    """The first n usable samples of a split (of each source of a mixture) as the model sees
    them: text (image tokens collapsed to `<token>xN`), decoded trained spans, token counts."""
    processor = processor or load_data_processor(recipe.model)
    path = dict(recipe_splits(recipe)).get(split)
    if path is None:
        from mmlora.errors import MmloraError

        raise MmloraError(f"The recipe has no data.{split}.")
    cfg = recipe.data
    scan = scan_split(path, cfg, processor, split, expand_captions=split == "train", progress=False, limit=n)
    # The token repeated once per visual feature (Gemma 3's differs from its image marker).
    # Runs are found by token id: the same string written in the data is text, not a feature.
    feature, feature_id = processor.family.feature_token, processor.image_token_id

    def decode(ids: list[int]) -> str:
        runs = itertools.groupby(ids, key=lambda token: token == feature_id)
        return "".join(f"{feature}x{len(list(run))}" if is_feature
                       else processor.decode(list(run), skip_special_tokens=False) for is_feature, run in runs)

    items = []
    # A mixture shows the first n of each source, each at its own resolution.
    chosen = [pair for part in scan.parts or [scan] for pair in zip(part.samples[:n], part.image_tokens)]
    for sample, counts in chosen:
        ids, offsets = tokenize_text(processor, sample.messages, counts)
        labels = answer_labels(processor, sample.messages, counts, ids, offsets, cfg.train_on)
        truncated = len(ids) > cfg.max_length
        keep = image_tokens_end(processor, sample.messages, counts, offsets)
        ids, labels = fit_length(ids, labels, cfg.max_length, cfg.too_long == "truncate", keep)
        runs = _runs(labels)
        items.append({
            "source": sample.source,
            "text": decode(ids),
            "marked": "".join(f"[[{decode(ids[a:b])}]]" if trained else decode(ids[a:b]) for a, b, trained in runs),
            "trained": [decode(ids[a:b]) for a, b, trained in runs if trained],
            "num_image_tokens": sum(counts),
            "num_tokens": len(ids),
            "truncated": truncated,
        })
    return items


def format_preview(items: list[dict]) -> str:
    """Samples as text, trained spans between [[ and ]]."""
    blocks = [
        f"--- {item['source']}  ({item['num_tokens']} tokens, {item['num_image_tokens']} visual"
        f"{', truncated' if item['truncated'] else ''}; trained spans in [[ ]])\n{item['marked']}"
        for item in items
    ]
    return "\n".join(blocks) if blocks else "no usable samples"


PREVIEW_KEYS = ("source", "text", "trained", "num_image_tokens", "num_tokens", "truncated")


def run_data_command(action: str, recipe_names: list[str], overrides: list[str] = (), as_json: bool = False,
                     n: int = 3, split: str = "train") -> tuple[str, int]:
    """`mmlora data check|preview` on one or more recipes: the output, and the exit status
    (check: 1 when `mmlora train` would refuse the data of any recipe, so it can gate a pipeline)."""
    from mmlora.config.loading import load_recipe

    results, texts, status = {}, [], 0
    for name in recipe_names:
        recipe = load_recipe(name, overrides)
        if action == "preview":
            items = preview_samples(recipe, n, split)
            results[name] = [{key: item[key] for key in PREVIEW_KEYS} for item in items]
            texts.append(format_preview(items))
        else:
            results[name] = check_recipe(recipe)
            texts.append(format_check(results[name]))
            stops = stop_reasons(results[name], recipe.data.on_error)
            status = max(status, int(bool(stops)))
            texts[-1] += "".join(f"\nmmlora train would stop: {reason}" for reason in stops)
    if as_json:
        payload = results[recipe_names[0]] if len(recipe_names) == 1 else results
        return json.dumps(payload, indent=2, ensure_ascii=False), status
    if len(recipe_names) > 1:
        texts = [f"== {name}\n{text}" for name, text in zip(recipe_names, texts)]
    return "\n".join(texts), status
