"""Evaluation inside training: eval loss, generation metrics, the best adapter, loss.png.

- Eval loss on `data.eval` at `train.eval_strategy` / `train.eval_steps`: the HF Trainer's own
  evaluation (`eval_dataset`), so it is logged like the training loss (console,
  train_log.jsonl, TensorBoard).
- Generation metrics (the task's, mmlora/evaluation/metrics/task.py): every `eval.generate_steps` steps
  on the first `eval.generate_subset` eval samples, logged as `eval_<metric>`; at the end of
  training on the whole split (at most `eval.limit` samples), logged as `final_<metric>` and
  written to `eval_metrics.json` and `eval_predictions.jsonl` in the output directory.
- `eval.best_metric`: whenever it improves, the adapter is saved to `<output_dir>/best`
  (adapter, processor, recipe and `best.json`), independently of the resumable checkpoints.
- `loss.png` (train and eval loss) is drawn when training ends, also after an interruption.
- The end-of-training generation runs after training returns (`finish`, called by train.py
  once the adapter is saved): a Ctrl-C or SIGTERM during it cannot lose the trained adapter.

Generation runs on the main process only, in eval mode, with the RNG state saved and restored:
it does not change what training does next.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from mmlora.config.loading import save_recipe
from mmlora.config.schema import Recipe
from mmlora.errors import MmloraError
from mmlora.evaluation.metrics.task import score_task
from mmlora.models.lora import save_adapter
from mmlora.models.model_card import write_snapshot_card
from mmlora.training.checkpoints import replace_folder
from mmlora.training.ranks import is_main_process

log = logging.getLogger(__name__)


def report_targets(requested: list[str]) -> list[str]:
    """`train.report_to` -> the Trainer's `report_to`: auto means TensorBoard when installed."""
    from transformers.integrations import is_tensorboard_available

    targets = []
    for name in requested:
        if name == "auto":
            targets += ["tensorboard"] if is_tensorboard_available() else []
        elif name == "tensorboard" and not is_tensorboard_available():
            raise MmloraError("train.report_to=tensorboard, but TensorBoard is not installed: "
                              "`pip install tensorboard`, or set train.report_to=none.")
        elif name != "none":
            targets.append(name)
    return sorted(set(targets))


def evaluation_arguments(recipe: Recipe) -> dict:
    """TrainingArguments for the eval loss and for logging (eval needs data.eval)."""
    strategy = recipe.train.eval_strategy if recipe.data.eval else "never"
    return {
        "eval_strategy": "no" if strategy == "never" else strategy,
        "eval_steps": recipe.train.eval_steps,
        "per_device_eval_batch_size": recipe.eval.batch_size,
        "report_to": report_targets(recipe.train.report_to),
    }


class TrainingEvaluation(TrainerCallback):
    """Eval-loss dataset, generation metrics, best-adapter keeping and loss.png for one run.

    Use: `Trainer(..., eval_dataset=evaluation.loss_dataset)`, then `evaluation.attach(trainer)`.
    """

    def __init__(self, recipe: Recipe, processor, samples: list | None, loss_dataset):
        """`samples` / `loss_dataset`: data.eval as pre-scanned with the train split
        (`TrainingData.eval_parts()`, mmlora/data/scan.py); None and None without data.eval."""
        self.recipe, self.processor = recipe, processor
        self.samples = samples or []
        # The eval loss covers the whole split; generation at most eval.limit samples (as `mmlora eval`).
        self.generated = self.samples[: recipe.eval.limit] if recipe.eval.limit else self.samples
        wants_loss = self.samples and recipe.train.eval_strategy != "never"
        self.loss_dataset = loss_dataset if wants_loss else None
        self.best_metric = (recipe.eval.best_metric or "").removeprefix("eval_") or None
        self.best: dict | None = None
        self.history: list[dict] = []
        self.final: dict | None = None
        self.trainer = None

    def attach(self, trainer) -> None:
        """Register with the trainer; its `log` reaches the console, the log file and TensorBoard."""
        self.trainer = trainer
        trainer.add_callback(self)

    # -- Trainer events ---------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        """Turn generation off for sharded models; a resumed run (global_step > 0) continues the
        best and the history it had written."""
        if self.generated and self._sharded():
            # One process cannot generate (or save the best adapter) with weights sharded over
            # all of them: it would wait for the others forever. The eval loss still runs.
            # Said once per run, by the main process (every rank turns generation off).
            if is_main_process():
                log.warning("ZeRO-3/FSDP: no generation metrics or best adapter during training; "
                            "run `mmlora eval` on the saved adapter instead.")
            self.generated, self.best_metric = [], None
        out = Path(args.output_dir)
        if state.global_step == 0:  # a fresh run (e.g. --overwrite): no best of an older run
            for stale in ("best", "best.tmp", "best.old"):
                if (out / stale / "best.json").is_file() and state.is_world_process_zero:
                    shutil.rmtree(out / stale)
            return
        if not (out / "eval_metrics.json").is_file():
            return
        try:
            saved = json.loads((out / "eval_metrics.json").read_text())
        except (OSError, ValueError):
            return
        self.history = [e for e in saved.get("history", []) if e.get("step", 0) <= state.global_step]
        best = saved.get("best")
        if best and best.get("metric") == self.best_metric and best.get("step", 0) <= state.global_step:
            self.best = best

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics and "eval_loss" in metrics and state.is_world_process_zero:
            self._record({"step": state.global_step, "eval_loss": metrics["eval_loss"]}, args)
            self._consider_best("loss", metrics["eval_loss"], state, args, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.recipe.eval.generate_steps
        if not self.generated or not state.is_world_process_zero:
            return
        if state.global_step >= state.max_steps and self.recipe.eval.generate_at_end:
            return  # the last step's point comes from the final evaluation (finish)
        if every and state.global_step % every == 0:
            subset = self.generated[: self.recipe.eval.generate_subset]
            predictions = self._generate(model, subset)
            self._log_subset(predictions, subset, args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        from mmlora.evaluation.plot import write_loss_plot

        out = Path(args.output_dir)
        write_loss_plot(state.log_history, out / "loss.png", title=f"loss ({self.recipe.task})")
        if self.history or self.final:
            self._write_metrics(out)

    def wants_final(self) -> bool:
        """Whether `finish` has work to do (generation on data.eval at the end of training)."""
        return bool(self.generated) and self.recipe.eval.generate_at_end

    def finish(self, model) -> None:
        """The end-of-training evaluation, run by train() after the adapter is saved (so a
        signal during it loses no training): metrics logged as final_*, eval_metrics.json,
        eval_predictions.jsonl. Main process only."""
        trainer = self.trainer
        if not self.wants_final() or not trainer.state.is_world_process_zero:
            return
        self._final(trainer.args, trainer.state, model)
        self._write_metrics(Path(trainer.args.output_dir))
        # TensorBoard closed its writer at on_train_end; logging final_* opened a new one.
        from transformers.integrations import TensorBoardCallback

        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                callback.on_train_end(trainer.args, trainer.state, trainer.control)

    def _sharded(self) -> bool:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        return is_deepspeed_zero3_enabled() or bool(getattr(self.trainer, "is_fsdp_enabled", False))

    # -- generation and scoring ---------------------------------------------------------------

    def _generate(self, model, samples) -> list[str]:
        import torch

        from mmlora.evaluation.generate import generate_answers, generation_settings

        was_training = model.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # training's RNG stream stays as it was
            torch.manual_seed(self.recipe.train.seed)
            predictions = generate_answers(
                model, self.processor, samples, self.recipe.eval.batch_size, progress=True,
                settings=generation_settings(self.recipe.eval), desc="eval generation",
            )
        model.train(was_training)
        return predictions

    def _log_subset(self, predictions, subset, args, state, model) -> None:
        """Log `eval_<metric>` of the subset and consider it for the best adapter."""
        scores = score_task(self.recipe.task, predictions, [s.references for s in subset],
                            self.recipe.eval.vqa_normalization)
        entry = {name: value for name, value in scores.metrics.items() if name != "count"}
        self._record({"step": state.global_step, **entry, "count": len(subset)}, args)
        self._log({f"eval_{k}": v for k, v in entry.items()})
        if self.best_metric in entry:
            self._consider_best(self.best_metric, entry[self.best_metric], state, args, model)

    def _final(self, args, state, model) -> None:
        """Generation metrics on the whole split (eval.limit), logged and written to disk."""
        from mmlora.evaluation.results import (
            EvalReport, FINE_TUNED, ModelRun, eval_items, prediction_records, write_jsonl,
        )

        samples = self.generated
        predictions = self._generate(model, samples)
        items = eval_items(samples)
        scores = score_task(self.recipe.task, predictions, [i.references for i in items],
                            self.recipe.eval.vqa_normalization)
        self.final = {"step": state.global_step, **scores.metrics}
        self._log({f"final_{k}": v for k, v in scores.metrics.items() if k != "count"})
        if self.recipe.eval.generate_steps:  # the periodic curve's last point: same subset
            k = self.recipe.eval.generate_subset
            self._log_subset(predictions[:k], samples[:k], args, state, model)
        report = EvalReport(self.recipe.task, "eval", self.recipe.data.eval, items,
                            [ModelRun(FINE_TUNED, args.output_dir, predictions, scores)],
                            vqa_normalization=self.recipe.eval.vqa_normalization)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "eval_predictions.jsonl", prediction_records(report))

    def _log(self, metrics: dict) -> None:
        if self.trainer is None:
            log.warning("%s", metrics)
            return
        # Trainer.log clears control.should_log; called from on_step_end, that would drop the
        # training loss due at this step. Keep the flag as it was.
        due = self.trainer.control.should_log
        self.trainer.log(dict(metrics))
        self.trainer.control.should_log = due

    # -- best adapter and files ---------------------------------------------------------------

    def _consider_best(self, name: str, value: float, state, args, model) -> None:
        if name != self.best_metric or model is None or not state.is_world_process_zero:
            return
        lower_is_better = name == "loss"
        if self.best is not None and (value >= self.best["value"] if lower_is_better else value <= self.best["value"]):
            return
        self.best = {"metric": name, "value": value, "step": state.global_step}
        self._save_best(Path(args.output_dir), model)

    def _save_best(self, out: Path, model) -> None:
        """Write the adapter to best.tmp, then swap it in for best/ (never a half-written best/)."""
        staged, final, old = out / "best.tmp", out / "best", out / "best.old"
        shutil.rmtree(staged, ignore_errors=True)
        save_adapter(model, staged)  # PiSSA/OLoRA converted to plain LoRA, as for the final adapter
        self.processor.save_pretrained(staged)
        save_recipe(self.recipe, staged / "recipe.yaml")
        (staged / "best.json").write_text(json.dumps(self.best, indent=2) + "\n")
        write_snapshot_card(staged, final, out, self.recipe.model.name)  # not PEFT's template (model_card.py)
        replace_folder(staged, final, old)
        log.info("new best %s=%.4f at step %d: saved to %s", self.best["metric"], self.best["value"],
                 self.best["step"], final)

    def _record(self, entry: dict, args) -> None:
        """Add to the history and rewrite eval_metrics.json (a resumed run reads it back)."""
        self.history.append(entry)
        self._write_metrics(Path(args.output_dir))

    def _write_metrics(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        summary = {"task": self.recipe.task, "data": self.recipe.data.eval, "final": self.final,
                   "best": self.best, "history": self.history}
        if self.recipe.task == "vqa":  # the rule behind every vqa_accuracy above
            summary["vqa_normalization"] = self.recipe.eval.vqa_normalization
        (out / "eval_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
