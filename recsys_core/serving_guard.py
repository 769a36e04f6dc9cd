"""``make serve``: MLflow's scoring server behind ``RequestGuard``, which refuses bodies over ``serving_max_body_mb``
before reading them, counts rows before MLflow parses them, and scores at most ``serving_max_concurrent`` requests at
once, so that no body, however large, can exhaust the server's memory. The checks of each row are the model's
(``serving``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from recsys_core.serving import _too_many_rows, serving_limits

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000  # error messages longer than this are cut

MODEL_URI_ENV = "RECSYS_SERVE_MODEL"


def scoring_app():
    """``uvicorn --factory recsys_core.serving_guard:scoring_app`` (``make serve``): MLflow's scoring server for the model
    named by $RECSYS_SERVE_MODEL (a models:/ or runs:/ URI or a folder) behind ``RequestGuard``."""
    uri = os.environ.get(MODEL_URI_ENV)
    if not uri:
        raise RuntimeError(f"set {MODEL_URI_ENV} to the model to serve, e.g. models:/ml-100k-two-stage@champion")
    return guarded_app(uri)


def guarded_app(model_uri: str):
    """MLflow's scoring app for ``model_uri`` (the same /invocations, /ping, /health, /version) behind
    ``RequestGuard`` with the limits stored in the model; $MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (60 s) bounds both
    the wait for a turn and the answer."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(model_uri)
    try:
        limits = getattr(model.unwrap_python_model(), "limits", None)
    except Exception:  # not a python_model pyfunc
        limits = None
    app = scoring_server.init(model)
    timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
    return RequestGuard(app, limits or serving_limits(), _scorer(model), timeout)


def _scorer(model):
    """(body, content type) -> (status, body, media type): MLflow's own parsing and prediction of /invocations."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    schema = model.metadata.get_input_schema()

    def score(body: bytes, content_type: str) -> tuple[int, bytes, str]:
        try:
            result = scoring_server.invocations(body, content_type, model, schema)
            return result.status, result.response.encode(), result.mimetype
        except MlflowException as err:
            return err.get_http_status_code(), err.serialize_as_json().encode(), "application/json"
        except Exception:
            log.exception("scoring failed")
            answer = {"error_code": "INTERNAL_ERROR", "message": "scoring failed; the server log has the details"}
            return 500, json.dumps(answer).encode(), "application/json"

    return score


class _TooLarge(Exception):
    pass


class RequestGuard:
    """ASGI app in front of MLflow's scoring app: POST /invocations is answered here (with MLflow's parsing and
    prediction, ``score``), the rest by MLflow. A body over ``serving_max_body_mb`` is refused (413) before it is read
    when its length is declared, as soon as it passes the limit otherwise; more than ``serving_max_rows`` rows are
    refused (400) before MLflow converts them row by row (about 0.25 ms a row). At most ``serving_max_concurrent``
    requests are read, parsed and scored at once, the others wait (503 after ``timeout`` s); a request still being
    scored after ``timeout`` s is answered 504 but keeps its slot until its work ends, so the work in progress, and the
    memory it takes, stays bounded. An error body has no ``stack_trace`` (it is logged here) and a message of at most
    MAX_ERROR_CHARS (MLflow's parse errors carry a traceback with server paths and echo the input)."""

    def __init__(self, app, limits, score, timeout: float = 60.0):
        self.app, self.limits, self.score, self.timeout = app, limits, score, timeout
        self.max_bytes = int(limits.serving_max_body_mb * 2**20)
        self.slots: asyncio.Semaphore | None = None  # made in the server's event loop

    def _too_large(self, size: str) -> str:
        return (f"the request body {size}; this server takes at most serving_max_body_mb = "
                f"{self.limits.serving_max_body_mb:g} MB: send fewer rows per request (at most serving_max_rows = "
                f"{self.limits.serving_max_rows})")  # fmt: skip

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/invocations":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            size = f"is {int(declared) / 2**20:.1f} MB"
            return await _reply(send, 413, "REQUEST_TOO_LARGE", self._too_large(size))
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.limits.serving_max_concurrent)
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout)
        except TimeoutError:
            message = (f"the server is busy: {self.limits.serving_max_concurrent} requests (serving_max_concurrent) "
                       f"have been in progress for {self.timeout:g} s; retry later")  # fmt: skip
            return await _reply(send, 503, "TEMPORARILY_UNAVAILABLE", message)
        scoring = False
        try:
            try:
                body = await self._read(receive)
            except _TooLarge:
                return await _reply(
                    send, 413, "REQUEST_TOO_LARGE", self._too_large(f"is over {self.limits.serving_max_body_mb:g} MB")
                )
            if body is None:
                return  # the client left
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            rows = await asyncio.to_thread(count_rows, body, content_type.encode("latin-1"))
            if rows is not None and rows > self.limits.serving_max_rows:
                return await _reply(send, 400, "INVALID_PARAMETER_VALUE", _too_many_rows(rows, self.limits))
            work = asyncio.ensure_future(asyncio.to_thread(self.score, body, content_type))
            work.add_done_callback(lambda _: self.slots.release())  # the slot is free when the work has ended
            scoring = True
            try:
                status, answer, media = await asyncio.wait_for(asyncio.shield(work), self.timeout)
            except TimeoutError:
                message = (f"no answer within {self.timeout:g} s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT): send fewer "
                           "rows or shorter histories per request")  # fmt: skip
                return await _reply(send, 504, "DEADLINE_EXCEEDED", message)
            await _send(send, status, _scrubbed(answer) if status >= 400 else answer, media)
        finally:
            if not scoring:
                self.slots.release()

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def count_rows(body: bytes, content_type: bytes) -> int | None:
    """The rows of a JSON (dataframe_records, dataframe_split, instances, inputs) or Parquet request body; None when
    the body does not say (MLflow's parser then answers it)."""
    mime = content_type.split(b";")[0].strip().lower()
    try:
        if mime == b"application/vnd.apache.parquet":
            import io

            import pyarrow.parquet as pq

            return pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
        if mime != b"application/json":
            return None
        data = json.loads(body)
    except Exception:  # not JSON / Parquet: MLflow says what is wrong
        return None
    if not isinstance(data, dict):
        return None
    for key in ("dataframe_records", "instances", "inputs"):
        rows = data.get(key)
        if isinstance(rows, list):
            return len(rows)
        if isinstance(rows, dict) and rows:
            column = next(iter(rows.values()))
            return len(column) if isinstance(column, list) else None
    split = data.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return len(split["data"])
    return None


async def _reply(send, status: int, code: str, message: str) -> None:
    await _send(send, status, json.dumps({"error_code": code, "message": message}).encode(), "application/json",
                close=True)  # fmt: skip


async def _send(send, status: int, body: bytes, media: str, close: bool = False) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + ([(b"connection", b"close")] if close else []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def _scrubbed(body: bytes) -> bytes:
    """An error body without ``stack_trace`` and with its message cut to MAX_ERROR_CHARS."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:MAX_ERROR_CHARS]
    if not isinstance(data, dict):
        return body[:MAX_ERROR_CHARS]
    trace = data.pop("stack_trace", None)
    if trace:
        log.warning("error response %s; its stack trace (not sent to the client):\n%s", data.get("error_code"), trace)
    message = data.get("message")
    if isinstance(message, str) and len(message) > MAX_ERROR_CHARS:
        data["message"] = message[:MAX_ERROR_CHARS] + " ... (cut)"
    return json.dumps(data).encode()
