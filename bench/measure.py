"""What one benchmark run measures: a Trainer callback (step times, data wait, time to first
step) and a forward pre-hook on the model (real tokens, padded slots, visual tokens per step)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback


@dataclass
class Measurement:
    steps: int = 0
    measured_steps: int = 0
    measured_seconds: float = 0.0
    measured_cpu_seconds: float = 0.0
    """CPU time of the training process over the same steps (all its threads; not its workers)."""
    real_tokens: int = 0
    slots: int = 0
    visual_tokens: int = 0
    samples: int = 0
    time_to_first_step: float = 0.0
    data_wait_ms: list = field(default_factory=list)
    step_ms: list = field(default_factory=list)
    most_trained: int = 0
    """Most positions with a trained next token in one forward (logits the loss needs), warm-up included."""
    widest: tuple = (0, 0)
    """(rows, width) of the largest batch of the run, warm-up included (for the memory estimate)."""
    peak_memory: int = 0
    peak_memory_before_training: int = 0
    """Peak up to the first step (loading, data pre-scan); CPU only."""
    losses: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Meter(TrainerCallback):
    """Times steps after `warmup` (excluded from throughput) and counts tokens per forward.

    Real tokens: attention-mask ones for padded batches; for packed batches (4-D or no mask)
    the tokens that are not the pad id (the synthetic data never contains it).
    """

    def __init__(self, start: float, pad_id: int, visual_id: int, warmup: int, batch_size: int, cuda: bool):
        self.m = Measurement()
        self.memory = None if cuda else PssSampler()
        self.start, self.pad_id, self.visual_id, self.warmup = start, pad_id, visual_id, warmup
        self.batch_size, self.cuda = batch_size, cuda
        self.step_start = self.last_end = self.window_start = self.window_cpu = None
        self._counting = False

    def _sync(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _count(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        # The largest batch is tracked over warm-up steps too: the measured peak memory covers
        # the whole run, so the planner's estimate must be for the largest batch of the whole run.
        labels = kwargs.get("labels")
        if labels is not None:
            self.m.most_trained = max(self.m.most_trained, int((labels[:, 1:] != -100).sum()))
        if ids.numel() > self.m.widest[0] * self.m.widest[1]:
            self.m.widest = tuple(ids.shape)
        if not self._counting:
            return
        mask = kwargs.get("attention_mask")
        real = int(mask.sum()) if mask is not None and mask.dim() == 2 else int((ids != self.pad_id).sum())
        self.m.real_tokens += real
        self.m.slots += ids.numel()
        self.m.visual_tokens += int((ids == self.visual_id).sum())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.memory is not None:
            self.m.peak_memory_before_training = self.memory.peak
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.register_forward_pre_hook(self._count, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        now = self._sync()
        if self.last_end is not None and self.m.steps >= self.warmup:
            self.m.data_wait_ms.append(1000 * (now - self.last_end))
        self.step_start = now
        self._counting = self.m.steps >= self.warmup

    def on_step_end(self, args, state, control, **kwargs):
        now = self._sync()
        self.m.steps += 1
        if self.m.steps == 1:
            self.m.time_to_first_step = now - self.start
        if self.m.steps == self.warmup:
            self.window_start, self.window_cpu = now, time.process_time()
        elif self.m.steps > self.warmup:
            self.m.step_ms.append(1000 * (now - self.step_start))
            self.m.measured_steps += 1
            self.m.samples += self.batch_size
            self.m.measured_seconds = now - self.window_start
            self.m.measured_cpu_seconds = time.process_time() - self.window_cpu
        self.last_end = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.m.losses.append(float(logs["loss"]))

    def finish(self) -> Measurement:
        if self.cuda:
            import torch

            self.m.peak_memory = torch.cuda.max_memory_allocated()
        else:
            self.m.peak_memory = self.memory.stop()
        return self.m


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class PssSampler:
    """Peak memory of this process and its children (DataLoader workers) on Linux: the summed
    proportional set size (PSS: shared pages split between the processes that map them, so
    forked workers do not count torch's libraries twice), sampled every 20 ms."""

    def __init__(self, interval: float = 0.02):
        self.peak, self.interval, self.running = 0, interval, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        me = os.getpid()
        while self.running:
            self.peak = max(self.peak, _pss(me) + sum(_pss(c) for c in _children(me)))
            time.sleep(self.interval)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak
