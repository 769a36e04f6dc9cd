"""A served model that protects itself: every request checked before any work (rows, history length, k, ids), each
refusal a 400 with the exact reason and no stack trace or server path, the guard of `make serve` (body size, row
count before MLflow's parse, requests in flight), and `make serve` / `mlflow models serve` from a fresh shell."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_config

from recsys_core import serving
from recsys_core.errors import ConfigError
from recsys_core.net import free_port, wait_until_answers
from recsys_core.serving import RequestRefused, check_request, check_rerank_request
from recsys_core.serving_guard import RequestGuard, count_rows

N_ITEMS, TOP = 50, 10
LIMITS = serving.serving_limits({"serving_max_rows": 5, "serving_max_history": 8, "serving_max_candidates": 4})


def refused(frame: dict | pd.DataFrame, most_k: int = TOP, retriever=None) -> str:
    with pytest.raises(RequestRefused) as err:
        check_request(pd.DataFrame(frame), N_ITEMS, LIMITS, most_k, f"rerank_top_k = {most_k} items", retriever)
    return str(err.value)


# ---- the checks, before any work ----------------------------------------------------------------------------------
def test_a_good_request_passes_with_its_defaults():
    request = check_request(pd.DataFrame({"history": [[1, 2, 3], [], None], "k": [4, None, 10]}), N_ITEMS, LIMITS,
                            TOP, "")  # fmt: skip
    assert [h.tolist() for h in request.histories] == [[1, 2, 3], [], []]
    assert request.ks == [4, 10, 10] and request.users is None
    assert check_request(pd.DataFrame({"history": [[1]]}), N_ITEMS, LIMITS, 3, "").ks == [3]  # default 10, capped


def test_too_many_rows_name_the_limit():
    text = refused({"history": [[1]] * 6})
    assert text.startswith("6 rows in one request") and "serving_max_rows = 5" in text
    assert "no rows" in refused(pd.DataFrame({"history": []}))


def test_a_long_history_names_the_limit():
    text = refused({"history": [[1, 2, 3], list(range(1, 10))]})
    assert (
        text
        == "row 1: 'history' holds 9 item ids; this server takes at most serving_max_history = 8: send the most recent 8"
    )


@pytest.mark.parametrize("bad", [0, -3, N_ITEMS + 1, 10**6])
def test_an_item_id_out_of_range_is_named_with_the_range(bad):
    text = refused({"history": [[1, 2], [3, bad, 4]]})
    assert (
        text
        == f"row 1: item id {bad} in 'history' (position 1) is not an item of this model: its item ids are 1..{N_ITEMS}"
    )


@pytest.mark.parametrize("value", ["abc", [1, [2]], [1.5], [True]])
def test_a_history_that_is_not_a_list_of_ids(value):
    assert "row 0: 'history' must be" in refused({"history": [value]})


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_refused(k):
    assert refused({"history": [[1]], "k": [k]}) == f"row 0: k = {k}; k is how many items come back: ask for 1..{TOP}"


def test_k_over_what_the_model_returns_names_the_limit():
    text = refused({"history": [[1], [2]], "k": [5, 1000]})
    assert (
        text
        == f"row 1: k = 1000 is more than this model returns: at most rerank_top_k = {TOP} items; ask for k <= {TOP}"
    )
    assert "whole number" in refused({"history": [[1]], "k": [2.5]})


def test_user_ids_are_checked_against_the_retriever():
    class Collaborative:  # the range check of a collaborative retriever
        def user_ids(self, users, n):
            if users.max() > 7:
                raise ValueError(
                    f"user_id {users.max()} is unknown to this vbpr retriever: it has learned vectors for user ids 1..7"
                )

    assert "integer >= 1" in refused({"history": [[1]], "user_id": [0]}, retriever=Collaborative())
    assert "user ids 1..7" in refused({"history": [[1]], "user_id": [8]}, retriever=Collaborative())
    ok = check_request(pd.DataFrame({"history": [[1], [2]], "user_id": [3, None]}), N_ITEMS, LIMITS, TOP, "",
                       Collaborative())  # fmt: skip
    assert ok.users.tolist() == [3, 0]


def test_reranker_candidates_are_checked():
    good = check_rerank_request(pd.DataFrame({"history": [[1]], "candidates": [[2, 3]]}), N_ITEMS, LIMITS)
    assert [c.tolist() for c in good.candidates] == [[2, 3]]
    for candidates, fragment in (([], "'candidates' is empty"), ([1, 2, 3, 4, 5], "serving_max_candidates = 4"),
                                 ([2, 99], "item id 99 in 'candidates'")):  # fmt: skip
        with pytest.raises(RequestRefused, match=fragment):
            check_rerank_request(pd.DataFrame({"history": [[1]], "candidates": [candidates]}), N_ITEMS, LIMITS)


def test_limits_are_settings_with_defaults():
    from recsys_core.config import load_config

    cfg = load_config(REPO / "params.yaml", {"serving_max_rows": 200})
    assert cfg.serving.serving_max_rows == 200 and cfg.serving.serving_max_history == 5000
    with pytest.raises(ConfigError, match="serving.serving_max_rows"):
        load_config(None, {"serving_max_rows": 0})


# ---- how a refusal reaches the client -----------------------------------------------------------------------------
def test_a_refusal_is_a_400_with_the_reason_alone():
    """MLflow's scoring server catches MlflowException from predict, prefixes its message with the input frame and
    serialises it; an other exception becomes 'unexpected error' with a stack_trace. A refusal keeps its reason."""
    with pytest.raises(ValueError) as caught, serving._answering():
        raise RequestRefused("row 0: k = 0; ask for 1..10")
    err = caught.value
    err.message = f"Failed to predict data '{pd.DataFrame({'history': [[0]]})}'. \nError: {err.message}"  # as MLflow
    answer = json.loads(err.serialize_as_json())
    assert err.get_http_status_code() == 400 and "stack_trace" not in answer
    assert answer["message"] == "row 0: k = 0; ask for 1..10" and answer["error_code"] == "INVALID_PARAMETER_VALUE"


def test_another_failure_is_a_500_naming_only_the_type():
    with pytest.raises(Exception) as caught, serving._answering():
        raise FileNotFoundError("/srv/secret/path/model.safetensors")
    body = caught.value.serialize_as_json()
    assert caught.value.get_http_status_code() == 500 and "FileNotFoundError" in body
    assert "/srv" not in body and "stack_trace" not in body


@pytest.mark.parametrize(
    "body,content_type,rows",
    [
        ({"dataframe_records": [{"history": [1]}] * 7}, "application/json", 7),
        ({"dataframe_split": {"columns": ["history"], "data": [[[1]]] * 3}}, "application/json; charset=utf-8", 3),
        ({"inputs": {"history": [[1], [2]]}}, "application/json", 2),
        ({"instances": [{"history": [1]}]}, "application/json", 1),
        ("not json", "application/json", None),
        ("history\n1\n", "text/csv", None),
    ],
)
def test_count_rows(body, content_type, rows):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert count_rows(raw, content_type.encode()) == rows


# ---- the guard of `make serve`, as an ASGI app ---------------------------------------------------------------------
class Scorer:
    """A stand-in for MLflow's parsing and prediction: records the bodies, takes ``seconds``, answers ``answer``."""

    def __init__(self, status=200, answer=b'{"predictions": []}', seconds=0.05):
        self.status, self.answer, self.seconds = status, answer, seconds
        self.bodies, self.running, self.most, self.lock = [], 0, 0, threading.Lock()

    def __call__(self, body: bytes, content_type: str):
        with self.lock:
            self.bodies.append(body)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return self.status, self.answer, "application/json"


def guard_for(scorer: Scorer, timeout: float = 60.0, **limits) -> RequestGuard:
    values = {"serving_max_body_mb": 1, "serving_max_rows": 5, **limits}
    return RequestGuard(None, serving.serving_limits(values), scorer, timeout)


async def post_to(guard, body: bytes, chunk: int | None = None, declare: bool = True, content_type=b"application/json"):
    """One POST /invocations through ``guard``: (status, JSON answer, bytes the guard read)."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    read, sent = [0], []
    headers = [(b"content-type", content_type)] + ([(b"content-length", str(len(body)).encode())] if declare else [])

    async def receive():
        if read[0] < len(pieces):
            read[0] += 1
            return {"type": "http.request", "body": pieces[read[0] - 1], "more_body": read[0] < len(pieces)}
        await asyncio.sleep(3600)  # the client waits for its answer

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
    await guard(scope, receive, send)
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload), sum(len(p) for p in pieces[: read[0]])


def call(guard, body: bytes, **kwargs):
    return asyncio.run(post_to(guard, body, **kwargs))


ONE_ROW = json.dumps({"dataframe_records": [{"history": [1]}]}).encode()


def test_the_guard_refuses_a_declared_large_body_without_reading_it():
    scorer = Scorer()
    status, answer, read = call(guard_for(scorer), b" " * (3 * 2**20))
    assert status == 413 and read == 0 and not scorer.bodies and answer["error_code"] == "REQUEST_TOO_LARGE"
    assert answer["message"].startswith(
        "the request body is 3.0 MB; this server takes at most serving_max_body_mb = 1 MB"
    )


def test_the_guard_stops_reading_a_chunked_body_at_the_limit():
    scorer = Scorer()
    status, answer, read = call(guard_for(scorer), b" " * (5 * 2**20), chunk=2**18, declare=False)
    assert status == 413 and read <= 2**20 + 2**18 and not scorer.bodies and "is over 1 MB" in answer["message"]


def test_the_guard_counts_rows_before_mlflow_parses_them():
    scorer = Scorer()
    body = json.dumps({"dataframe_records": [{"history": [1, 2], "k": 5}] * 120}).encode()
    status, answer, _ = call(guard_for(scorer), body)
    assert status == 400 and not scorer.bodies and answer["message"].startswith("120 rows in one request")
    small = json.dumps({"dataframe_records": [{"history": [1, 2]}] * 5}).encode()
    assert call(guard_for(scorer), small, chunk=7)[0] == 200 and scorer.bodies == [small]


def test_the_guard_strips_stack_traces_and_cuts_long_messages():
    trace = 'Traceback (most recent call last):\n  File "/work/main/.venv/lib/python3.11/site-packages/x.py"'
    answer = json.dumps({"error_code": "BAD_REQUEST", "message": "x" * 5000, "stack_trace": trace}).encode()
    status, cleaned, _ = call(guard_for(Scorer(400, answer)), b"a,b\n1,2\n", content_type=b"text/csv")
    assert status == 400 and "stack_trace" not in cleaned and len(cleaned["message"]) < 2100


def test_the_guard_scores_at_most_max_concurrent_requests_at_once():
    scorer = Scorer()
    guard = guard_for(scorer, serving_max_concurrent=2)

    async def many():
        return await asyncio.gather(*(post_to(guard, ONE_ROW) for _ in range(6)))

    assert [status for status, _, _ in asyncio.run(many())] == [200] * 6
    assert len(scorer.bodies) == 6 and scorer.most == 2


def test_a_request_past_the_timeout_keeps_its_slot_until_its_work_ends():
    """MLflow's own timeout answers 504 and lets the work go on beside new requests; the guard answers 504 too, but
    the next request waits for the slot, so no more than serving_max_concurrent computations ever run."""
    scorer = Scorer(seconds=0.6)
    guard = guard_for(scorer, timeout=0.3, serving_max_concurrent=1)

    async def two():
        first = asyncio.ensure_future(post_to(guard, ONE_ROW))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(post_to(guard, ONE_ROW))
        return await first, await second

    (status1, answer1, _), (status2, answer2, _) = asyncio.run(two())
    assert status1 == 504 and "no answer within 0.3 s" in answer1["message"]
    assert status2 == 503 and "retry later" in answer2["message"] and scorer.most == 1


# ---- over HTTP: a real served model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny two-stage model (untrained LRURec + BERT4Rec over 50 items, rerank_top_k 10) saved as MLflow logs it,
    with small row and history limits stored in its settings."""
    from recsys_core.rerank.bert4rec import BERT4Rec
    from recsys_core.retrieval.lrurec import LRURec
    from recsys_core.training import seed_everything

    root = tmp_path_factory.mktemp("served")
    seed_everything(0)
    cfg = tiny_config(**{"bert4rec.bert_hidden_size": 16, "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16})
    LRURec(N_ITEMS, LRURec.hyperparameters(cfg, "beauty")).save(root / "retriever")
    BERT4Rec(N_ITEMS, BERT4Rec.hyperparameters(cfg, "beauty")).save(root / "reranker")
    titles = [f"Item {i}" for i in range(1, N_ITEMS + 1)]
    pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": titles}).to_parquet(root / "items.parquet")
    (root / "settings.json").write_text(json.dumps({"retrieval_top_k": 20, "rerank_top_k": TOP}))
    serving.log_two_stage(root / "retriever", root / "reranker", root / "items.parquet", root / "settings.json",
                          [1, 2, 3], [], {"serving_max_rows": 50, "serving_max_history": 100},
                          path=root / "model")  # fmt: skip
    return root / "model"


def test_the_logged_model_stores_its_limits(model_folder):
    stored = json.loads((model_folder / "artifacts" / "settings.json").read_text())
    assert stored["rerank_top_k"] == TOP and stored["serving"]["serving_max_rows"] == 50
    assert stored["serving"]["serving_max_body_mb"] == serving.serving_limits().serving_max_body_mb  # a default
    model = serving.TwoStageModel()
    artifacts = {name: str(model_folder / "artifacts" / file) for name, file in (("retriever", "retriever"),
                 ("reranker", "reranker"), ("items", "items.parquet"), ("settings", "settings.json"))}  # fmt: skip
    model.load_context(SimpleNamespace(artifacts=artifacts))
    assert model.limits.serving_max_history == 100


FRESH_SHELL = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}  # no venv


class Server:
    """A server started in its own process group, from a fresh shell's environment (no venv on PATH)."""

    def __init__(self, command: str, port: int, env: dict | None = None):
        self.port = port
        self.process = subprocess.Popen(["bash", "-c", command], cwd=REPO, env={**FRESH_SHELL, **(env or {})},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        if not wait_until_answers(f"http://127.0.0.1:{port}/ping", self.process, 180):
            self.stop()
            pytest.fail(f"the server did not start:\n{self.process.stdout.read().decode()[-3000:]}")

    def post(self, body, content_type: str = "application/json") -> tuple[int, dict, float]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/invocations", data,
                                         {"Content-Type": content_type})  # fmt: skip
        start = time.time()
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.loads(answer.read()), time.time() - start
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), time.time() - start

    def peak_memory_mb(self) -> float:
        """The summed peak RSS (VmHWM) of the server's processes."""
        total, todo = 0, [self.process.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        return total / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


def record(history, k=None) -> dict:
    return {"history": history, **({} if k is None else {"k": k})}


def assert_refused_like_a_client_should_see(server: Server):
    """ids and k out of range: 400, the exact reason, no stack trace, no server path."""
    status, answer, _ = server.post({"dataframe_records": [record([1, 2]), record([3], 3)]})  # k in one row only
    assert status == 200 and [len(p["items"]) for p in answer["predictions"]] == [TOP, 3]
    answers = []
    for bad in (0, -3, N_ITEMS + 7):
        status, answer, _ = server.post({"dataframe_records": [record([1, 2]), record([1, bad, 2], 3)]})
        assert (status, answer["message"]) == (400, f"row 1: item id {bad} in 'history' (position 1) is not an item "
                                                    f"of this model: its item ids are 1..{N_ITEMS}")  # fmt: skip
        answers.append(answer)
    for k, fragment in ((0, "k is how many items come back: ask for 1..10"), (-3, "ask for 1..10"),
                        (1000, f"is more than this model returns: at most rerank_top_k = {TOP} items")):  # fmt: skip
        status, answer, _ = server.post({"dataframe_records": [record([1, 2], k)]})
        assert status == 400 and answer["message"].startswith(f"row 0: k = {k}") and fragment in answer["message"]
        answers.append(answer)
    status, answer, _ = server.post({"dataframe_records": [record([1], 2.5)]})
    assert status == 400 and answer["message"] == "row 0: 'k' must be a whole number of items; got 2.5"
    status, answer, _ = server.post({"dataframe_records": [record([1])] * 51})
    assert status == 400 and answer["message"].startswith("51 rows") and "serving_max_rows = 50" in answer["message"]
    answers.append(answer)
    status, answer, _ = server.post({"dataframe_records": [record(list(range(1, 50)) * 3)]})
    assert status == 400 and "serving_max_history = 100" in answer["message"]
    for each in [*answers, answer]:
        text = json.dumps(each)
        assert "stack_trace" not in text and str(REPO) not in text and "site-packages" not in text
        assert each["error_code"] == "INVALID_PARAMETER_VALUE"


def test_make_serve_from_a_fresh_shell_refuses_what_would_sink_it(model_folder):
    """`make serve` without an activated venv; the issue's 120,000-row (5 MB) body, refused in seconds with the
    server's memory bounded; a body over serving_max_body_mb refused before it is read."""
    port = free_port()
    server = Server(f"make -o .venv/.installed serve SERVE_MODEL={model_folder} SERVE_PORT={port}", port)
    try:
        status, answer, _ = server.post({"dataframe_records": [record([1, 2, 3], 4), record([5])]})
        assert status == 200 and [len(p["items"]) for p in answer["predictions"]] == [4, TOP]
        assert_refused_like_a_client_should_see(server)

        rows = [record([1 + (r + j) % N_ITEMS for j in range(8)], 5) for r in range(120_000)]
        body = json.dumps({"dataframe_records": rows}).encode()
        assert len(body) > 5 * 2**20
        status, answer, seconds = server.post(body)
        assert status == 400 and answer["message"].startswith("120000 rows in one request") and seconds < 30

        status, answer, _ = server.post(b"history\n[1,2]\n", "text/csv")  # MLflow's parse error has a stack trace
        assert status == 400 and "stack_trace" not in answer

        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # 1 GB announced, 64 KB sent
            sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {2**30}\r\n\r\n".encode() + b" " * 65536)  # fmt: skip
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):  # the server closes the connection after its answer
                    reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 413") and "serving_max_body_mb = 8 MB" in reply
        assert server.peak_memory_mb() < 2048
        assert server.post({"dataframe_records": [record([1, 2])]})[0] == 200  # still serving
    finally:
        server.stop()


def test_mlflow_models_serve_as_the_readme_shows_it(model_folder):
    """The README's plain command from a fresh shell (mlflow starts uvicorn through PATH: the command puts the
    venv's bin first); without the guard the pyfunc itself refuses, with the same reasons."""
    port = free_port()
    venv_bin = Path(sys.executable).parent
    command = (f'PATH="{venv_bin}:$PATH" {venv_bin}/mlflow models serve -m {model_folder} --env-manager local '
               f"--host 127.0.0.1 --port {port}")  # fmt: skip
    server = Server(command, port)
    try:
        status, answer, _ = server.post({"dataframe_records": [record([1, 2, 3], 4)]})
        assert status == 200 and len(answer["predictions"][0]["titles"]) == 4
        assert_refused_like_a_client_should_see(server)
    finally:
        server.stop()
