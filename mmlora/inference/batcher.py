"""Requests that arrive together are answered in one batch.

A server thread per HTTP request would otherwise call the engine one request at a time. The
batcher keeps a queue: one worker thread takes the oldest request, waits `window_s` for others,
and answers every waiting request with the same decoding settings (up to `max_batch`) in one
`InferenceEngine.generate` call, left padded (each future's result: the answer with its token
counts). Greedy answers are the same batched or alone
(tests/inference/test_engine.py), so batching changes the speed, not the text. Requests with
other settings wait for the next round, in arrival order. Each request is encoded and checked
against the context before its batch is generated: one that cannot be answered gets its own
error, and the rest of its batch is answered.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from mmlora.inference.engine import EncodedRequest, GenerationSettings, InferenceEngine, Request


@dataclass
class _Job:
    request: Request | EncodedRequest
    settings: GenerationSettings
    future: Future = field(default_factory=Future)


class Batcher:
    """Collects concurrent requests into batches for one engine (see the module docstring)."""

    def __init__(self, engine: InferenceEngine, max_batch: int = 8, window_s: float = 0.01):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self.batch_sizes: list[int] = []
        """Size of every batch answered so far (the server logs them; tests read them)."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue, waiting for a batch with their settings
        self._worker = threading.Thread(target=self._run, name="mmlora-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: Request | EncodedRequest, settings: GenerationSettings) -> Future:
        """A future for the request's answer, a `Generated` (its exception: what the engine raised).
        An `EncodedRequest` (the server's, checked already) is generated from without encoding again."""
        job = _Job(request, settings)
        self._queue.put(job)
        return job.future

    def answer(self, request: Request | EncodedRequest, settings: GenerationSettings) -> str:
        return self.submit(request, settings).result().text

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._queue.put(None)
        self._worker.join()

    def _next_batch(self) -> list[_Job] | None:
        first = self._held.pop(0) if self._held else self._queue.get()
        if first is None:
            return None
        deadline = time.monotonic() + self.window_s
        batch, others = [first], []
        for job in self._held:
            (batch if job.settings == first.settings and len(batch) < self.max_batch else others).append(job)
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            (batch if job.settings == first.settings else others).append(job)
        self._held = others
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            batch = self._encoded(batch)
            if not batch:
                continue
            try:
                answers = self.engine.generate([job.request for job in batch], batch[0].settings,
                                               batch_size=len(batch))
            except BaseException as err:  # noqa: BLE001 - every waiting request gets the error
                for job in batch:
                    job.future.set_exception(err)
                continue
            for job, answer in zip(batch, answers):
                job.future.set_result(answer)

    def _encoded(self, batch: list[_Job]) -> list[_Job]:
        """The jobs of `batch` that can be generated, each request encoded and checked against the
        context; a job whose request cannot be (a bad image, a prompt past the context) gets its
        own error and leaves the batch, so it does not fail the others."""
        ready = []
        for job in batch:
            try:
                job.request = self.engine.encode(job.request) if isinstance(job.request, Request) else job.request
                self.engine.check_context(job.request, job.settings)
            except Exception as err:  # noqa: BLE001 - this request's error, for its caller
                job.future.set_exception(err)
                continue
            ready.append(job)
        return ready
