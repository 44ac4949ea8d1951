"""The `transformers` backend of `mmlora serve`: an OpenAI-compatible FastAPI app on one engine.

Routes: `GET /v1/models`, `POST /v1/chat/completions` (streamed as server-sent events when
`stream` is true, ending with `data: [DONE]`), `GET /health`, and with `ui` the try-it page at
`/` (mmlora/inference/web_page.py). Requests are parsed and their images checked in
mmlora/inference/openai_protocol.py before they reach the model; concurrent non-streamed
requests are answered in batches (mmlora/inference/batcher.py); streamed ones one at a time
(the engine's lock serialises them with the batches). Every error answers in OpenAI's error
shape with its status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse

from mmlora.data.samples import RowError
from mmlora.inference.batcher import Batcher
from mmlora.evaluation.generate import Generated
from mmlora.inference.engine import InferenceEngine, request_sample
from mmlora.inference.openai_protocol import (
    ApiError, ChatCall, chat_chunk, chat_completion, completion_id, finish_reason, model_list, parse_chat_call,
    usage_chunk,
)
from mmlora.inference.request_checks import check_length, check_parameters, check_texts

log = logging.getLogger("mmlora.serve")


def sse(data) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def stream_events(engine: InferenceEngine, call: ChatCall):
    """The SSE lines of a streamed answer: the role, the text chunks, the finish, the usage when
    asked for (stream_options.include_usage), [DONE]."""
    chunk_id, answer, counted = completion_id(), Generated(), call.include_usage
    yield sse(chat_chunk(chunk_id, call.model, {"role": "assistant", "content": ""}, with_usage=counted))
    try:
        for piece in engine.stream(call.request, call.settings, usage=answer):
            yield sse(chat_chunk(chunk_id, call.model, {"content": piece}, with_usage=counted))
    except Exception as err:  # noqa: BLE001 - the status is sent already: report in the stream
        log.exception("generation failed")
        yield sse(ApiError(500, f"generation failed: {err}", kind="server_error").body())
        yield sse("[DONE]")
        return
    yield sse(chat_chunk(chunk_id, call.model, {}, finish_reason(answer), with_usage=counted))
    if counted:
        yield sse(usage_chunk(chunk_id, call.model, answer))
    yield sse("[DONE]")


def _parse(body, served: str, allow_urls: bool, engine: InferenceEngine | None = None) -> ChatCall:
    call = parse_chat_call(body, served, allow_urls)
    check_parameters(body)
    check_texts(body, call.request)
    try:
        request_sample(call.request, "the last user message")  # a 400 here, not a failed batch
    except RowError as err:
        raise ApiError(400, err.detail, "messages", code=err.reason) from None
    if engine is not None:  # counted as generation encodes it, which needs the markers to match
        check_length(engine, call.request, call.settings)
    return call


def build_app(engine: InferenceEngine, served: str, allow_urls: bool = False, ui: bool = False,
              max_batch: int = 8) -> FastAPI:
    """The app serving `engine` under the model id `served` (see the module docstring)."""
    batcher = Batcher(engine, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        batcher.close()  # the server stops: finish the queued requests, end the worker thread

    app = FastAPI(title="mmlora serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(_, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(http: HttpRequest, err: HTTPException):  # unknown route, wrong method
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        message = (f"{err.detail}: {http.method} {http.url.path}. This server answers GET /v1/models and "
                   f"POST /v1/chat/completions{' (and GET / with the try-it page)' if ui else ''}.")
        return JSONResponse(ApiError(err.status_code, message, kind=kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_, err: Exception):
        log.exception("request failed")
        return JSONResponse(ApiError(500, f"The server failed: {err}", kind="server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return model_list(served)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        try:
            body = json.loads(await http.body())
        except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a 5000-digit number, deep nesting
            raise ApiError(400, f"The request body is not valid JSON ({err}).") from None
        # Images are decoded (and URLs fetched) off the event loop.
        call = await run_in_threadpool(_parse, body, served, allow_urls, engine)
        if call.stream:
            return StreamingResponse(stream_events(engine, call), media_type="text/event-stream")
        answer = await asyncio.wrap_future(batcher.submit(call.request, call.settings))
        return chat_completion(answer, served)

    if ui:
        from mmlora.inference.web_page import page_html

        @app.get("/", response_class=HTMLResponse)
        async def page():
            return page_html(served)

    return app


def run_server(app: FastAPI, host: str, port: int, verbose: bool = False) -> None:
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")
