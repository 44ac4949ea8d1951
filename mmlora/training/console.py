"""What `mmlora train` prints while it trains: one readable line per log, a summary at the end.

The Trainer's own console output is a Python dict per log (`{'loss': '1.234', ...}`, quoted
strings, no step) and a tqdm bar that, in a log file, becomes hundreds of carriage-return
updates a minute. Instead:

- one line per logging step: `step 20/200  loss 1.2345  lr 9.51e-05  grad norm 0.872  epoch 0.40`;
- one line per evaluation with the best value so far: `eval  step 50/200  eval loss 0.9812
  (best 0.9812 at step 50)`;
- at the end: steps, time, the last loss, the best eval value, the final generation metrics
  (printed last, after the final eval loss) and where the adapter goes;
- progress bars only when stderr is a terminal (`progress_bars_wanted`).
"""

from __future__ import annotations

import math
import sys
import time

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from mmlora.training.fsdp import sharding_line

# Trainer log keys that are bookkeeping, not something to read every step.
_QUIET_KEYS = {"epoch", "total_flos", "step"}
_EVAL_BOOKKEEPING = ("_runtime", "_samples_per_second", "_steps_per_second")


def progress_bars_wanted(stream=None) -> bool:
    """Bars (tqdm) only on a terminal: in a log file they are noise."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _number(value) -> str:
    """Plain numbers: 4 decimals for ordinary values, 3 significant digits for tiny/huge ones."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _eval_metrics(logs: dict) -> dict:
    """The evaluation values of a Trainer log entry, by name without `eval_` ({} for others)."""
    return {k.removeprefix("eval_"): v for k, v in logs.items()
            if k.startswith("eval_") and not k.endswith(_EVAL_BOOKKEEPING) and k not in _QUIET_KEYS}


class QuietProgress(ProgressCallback):
    """The Trainer's progress bars without its dict-per-log lines (TrainingConsole prints those)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class TrainingConsole(TrainerCallback):
    """Readable training output (see the module docstring). `best_metric`: eval.best_metric."""

    def __init__(self, output_dir: str, best_metric: str | None = None, stream=None,
                 vqa_normalization: str | None = None):
        self.output_dir = output_dir
        # VQA accuracy is printed with its normalisation rule: vqa_accuracy[official].
        self.names = {"loss": "eval loss"}
        if vqa_normalization:
            self.names["vqa_accuracy"] = f"vqa_accuracy[{vqa_normalization}]"
        self.best_metric = (best_metric or "").removeprefix("eval_") or None
        self.stream = stream
        self.best: dict[str, tuple[float, int]] = {}
        self.final: dict[str, float] = {}
        self.last_loss: float | None = None
        self.train_loss: float | None = None
        self.started = time.monotonic()
        self.first_step = 0
        self.total = 0

    def write(self, line: str) -> None:
        from tqdm.auto import tqdm

        # tqdm.write keeps a bar on the terminal intact; without bars it is a plain print.
        tqdm.write(line, file=self.stream or sys.stdout)

    # -- Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.started, self.first_step, self.total = time.monotonic(), state.global_step, state.max_steps
        # A resumed run: the evaluations before the checkpoint count towards "best" as they did
        # in the uninterrupted run (the Trainer restored their log entries with the checkpoint).
        for entry in state.log_history:
            if entry.get("step", 0) <= state.global_step:
                for name, value in _eval_metrics(entry).items():
                    self._track_best(name, value, entry.get("step", 0))
        sharded = sharding_line(model)  # under FSDP2: how much of the weights this process holds
        if sharded and state.is_world_process_zero:
            self.write(sharded)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        line = self.format_log(dict(logs), state.global_step, state.max_steps)
        if line:
            self.write(line)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for line in self.summary(state.global_step, state.max_steps, time.monotonic() - self.started):
                self.write(line)

    # -- formatting ----------------------------------------------------------------------------

    def format_log(self, logs: dict, step: int, total: int) -> str | None:
        """The console line of one Trainer log entry (None: nothing to print now)."""
        if "train_runtime" in logs:  # the Trainer's end-of-training entry: part of the summary
            self.train_loss = logs.get("train_loss")
            return None
        final = {k.removeprefix("final_"): v for k, v in logs.items() if k.startswith("final_")}
        if final:  # whole-split generation metrics: printed in the summary, after the last eval
            self.final.update(final)
            return None
        where = f"step {step}/{total}"
        if "loss" in logs:
            self.last_loss = logs["loss"]
            parts = [where, f"loss {_number(logs['loss'])}"]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.3g}")
            if "grad_norm" in logs:
                parts.append(f"grad norm {_number(logs['grad_norm'])}")
            if "epoch" in logs:
                parts.append(f"epoch {logs['epoch']:.2f}")
            if logs.get("skipped_nonfinite_steps"):
                parts.append(f"skipped non-finite steps {logs['skipped_nonfinite_steps']}")
            return "  ".join(parts)
        metrics = _eval_metrics(logs)
        if not metrics:
            others = {k: v for k, v in logs.items() if k not in _QUIET_KEYS}
            return f"{where}  " + "  ".join(f"{k} {_number(v)}" for k, v in others.items()) if others else None
        for name, value in metrics.items():
            self._track_best(name, value, step)
        shown = self.best_metric if self.best_metric in metrics else next(iter(metrics))
        value, at = self.best[shown]
        name = self.names.get
        parts = [f"eval  {where}"] + [f"{name(k, k)} {_number(v)}" for k, v in metrics.items()]
        return "  ".join(parts) + f"  (best {name(shown, shown)} {_number(value)} at step {at})"

    def _track_best(self, name: str, value, step: int) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return
        lower_is_better = name == "loss"
        current = self.best.get(name)
        if current is None or (value < current[0] if lower_is_better else value > current[0]):
            self.best[name] = (float(value), step)

    def summary(self, step: int, total: int, seconds: float) -> list[str]:
        """The end-of-training lines: steps and time, losses, best eval values, final metrics,
        where the adapter goes."""
        done = step - self.first_step
        finished = step >= total
        head = (f"done: {step}/{total} steps" if finished else f"stopped at step {step}/{total}")
        rate = f", {seconds / done:.2f} s/step" if done > 0 else ""
        lines = [f"{head} in {_duration(seconds)} ({done} this run{rate})"]
        losses = []
        if self.last_loss is not None:
            losses.append(f"last logged loss {_number(self.last_loss)}")
        if self.train_loss is not None:  # the Trainer's mean over the steps of this train() call
            covered = f" (steps {self.first_step + 1}-{step}, this run)" if self.first_step else ""
            losses.append(f"mean train loss {_number(self.train_loss)}{covered}")
        if losses:
            lines.append("  ".join(losses))
        # The chosen metric first, then by name: the same order after a resume, whose earlier
        # evaluations come back from trainer_state.json with their keys sorted.
        for name in sorted(self.best, key=lambda n: (n != self.best_metric, n)):
            value, at = self.best[name]
            mark = "  (kept in best/)" if name == self.best_metric else ""
            label = "loss" if name == "loss" else self.names.get(name, name)
            lines.append(f"best eval {label} {_number(value)} at step {at}{mark}")
        if self.final:
            count = self.final.pop("count", None)
            on = f" ({int(count)} samples)" if count else ""
            lines.append(f"final on data.eval{on}: "
                         + "  ".join(f"{self.names.get(k, k)} {_number(v)}" for k, v in self.final.items()))
        if finished:
            best = f"; best adapter: {self.output_dir}/best" if self.best_metric in self.best else ""
            lines.append(f"adapter: {self.output_dir}{best}")
        return lines


def attach_console(trainer, recipe) -> TrainingConsole:
    """Replace the Trainer's dict printing with TrainingConsole (bars stay, on a terminal only:
    pass `disable_tqdm=not progress_bars_wanted()` to TrainingArguments)."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress)
    rule = recipe.eval.vqa_normalization if recipe.task == "vqa" else None
    console = TrainingConsole(trainer.args.output_dir, recipe.eval.best_metric, vqa_normalization=rule)
    trainer.add_callback(console)
    return console
