"""Trainer callbacks that protect a long run: skip non-finite updates, stop cleanly on signals."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class NonFiniteGuard(TrainerCallback):
    """Skips an optimizer update whose gradients hold NaN/inf, and stops after too many in a row.

    Runs right before `optimizer.step()`: dropping every `.grad` makes torch's optimizers skip
    the update (params without grad are left untouched, moments included). The learning-rate
    schedule still advances, so a skipped step counts as a step.

    Each skipped step is recorded in the trainer state's log history (so in trainer_state.json
    of every later checkpoint and in train_log.jsonl) as {"step": N, "skipped_nonfinite": 1,
    "skipped_nonfinite_steps": total so far}; a resumed run continues the count from there.
    """

    RECORD = "skipped_nonfinite"

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0
        self.consecutive = 0
        self.gave_up_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.skipped = sum(1 for entry in state.log_history if self.RECORD in entry)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if all(torch.isfinite(g).all() for g in grads):
            self.consecutive = 0
            return control
        for param in model.parameters():
            param.grad = None
        self.skipped += 1
        self.consecutive += 1
        step = state.global_step + 1
        state.log_history.append({self.RECORD: 1, "skipped_nonfinite_steps": self.skipped, "step": step})
        log.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)", step, self.consecutive)
        if self.consecutive >= self.max_bad_steps:
            self.gave_up_at = step
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.skipped:
            logs["skipped_nonfinite_steps"] = self.skipped


class StopNow(BaseException):
    """Raised by GracefulInterrupt's handler once nothing is left to save (see stop_at_once).
    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C / SIGTERM: save a checkpoint at the next step boundary and stop.
    Second Ctrl-C: stop at once. After `stop_at_once()` (the adapter is saved, only the final
    evaluation is left), the first signal stops at once with StopNow."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        self._at_once = False

    def stop_at_once(self, at_once: bool = True) -> None:
        """From now on a signal raises StopNow (nothing is left that a signal could lose), or
        with False, is deferred again."""
        self._at_once = at_once

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self._at_once:
            self.signum = signum
            raise StopNow(signum)
        if self.signum is not None:
            raise KeyboardInterrupt  # second signal: leave now
        self.signum = signum
        print(
            f"\nmmlora: {signal.Signals(signum).name} received: saving a checkpoint after this step, "
            "then stopping (Ctrl-C again to quit at once).",
            file=sys.stderr, flush=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
