"""A real `mmlora serve` (transformers backend) for the server and web-page tests: one uvicorn
server on a free local port, serving a saved tiny Qwen2-VL folder that records trained bounds."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Served:
    url: str
    """http://127.0.0.1:PORT"""
    app: object
    model_dir: Path
    name: str
    max_pixels: int


@pytest.fixture(scope="session")
def api_server(tmp_path_factory):
    """The server, as `mmlora serve --model DIR --served-model-name my-tiny --ui` runs it."""
    uvicorn = pytest.importorskip("uvicorn")
    from mmlora.inference.engine import InferenceEngine
    from mmlora.inference.server_app import build_app
    from mmlora.models.loading import save_tiny_model

    max_pixels = 112 * 112
    folder = save_tiny_model("tiny/qwen2-vl", tmp_path_factory.mktemp("served") / "model")
    # Bounds recorded as a merged model records them: the server must preprocess with them.
    (folder / "mmlora.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": max_pixels}))
    engine = InferenceEngine.load(model=str(folder), device="cpu")
    app = build_app(engine, "my-tiny", ui=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", app, folder, "my-tiny", max_pixels)
    runner.should_exit = True
    thread.join(timeout=30)
    assert not app.state.batcher._worker.is_alive(), "the server stopped but its batcher thread did not"
