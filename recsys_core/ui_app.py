"""The MLflow UI as ``make ui`` and the team server serve it: MLflow's own server app, opening on the training runs.

MLflow 3.17 opens every experiment on its GenAI overview (traces, latency, a "Detect Issues" pop-up) whatever the
experiment's ``mlflow.experimentKind`` tag, and its runs table shows source, models and dataset with every metric
hidden behind "Show more columns". Both are browser settings (localStorage), not server ones. This app is MLflow's
server app (``mlflow.server.fastapi_app:app``, unchanged) plus one script, loaded by the UI's page before MLflow's
bundle, that answers those two settings while the browser has none stored: the "Model training" view, and a runs
table with the headline metrics (and no assistant panel opening by itself). Whatever a user picks in the UI is
stored by MLflow as usual and wins from then on.

Registered as the MLflow app plugin ``seqrerank`` (pyproject's ``mlflow.app`` entry point), so that it is started as
``mlflow server --app-name seqrerank ...`` with every option of MLflow's server.
"""

from __future__ import annotations

import json
import os

# The UI's storage keys (MLflow 3.17.2's bundle, `<key>_v<version>` holding JSON): the workflow switch, the assistant
# panel MLflow opens by itself on a first visit and the GenAI "Detect Issues" pop-up (neither of use to training runs;
# both stay one click away), and each experiment page's persisted state under
# MLflowLocalStorage-<version>-ExperimentPage-<JSON list of experiment ids>-ReactComponentState
UI_SETTINGS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.detectIssues.guidanceShown_v1": True,
}
PAGE_PREFIX, PAGE_SUFFIX = "MLflowLocalStorage-1.1-ExperimentPage-", "-ReactComponentState"
HEADLINE_METRICS = ("val/ndcg_at_10", "test/ndcg_at_10", "test/recall_at_10", "test/ndcg_at_20")
SCRIPT_PATH = "/static-files/seqrerank-ui-defaults.js"


def column(kind: str, name: str) -> str:
    """A runs-table column key as the UI writes it: ``metrics.`test/ndcg_at_10```."""
    return f"{kind}.`{name}`"


def default_columns() -> list[str]:
    return [column("attributes", "Dataset"), column("attributes", "Models")] + [
        column("metrics", m) for m in HEADLINE_METRICS
    ]


def defaults_script() -> str:
    """The script: localStorage answers these keys with our defaults while nothing is stored under them."""
    settings = {
        "exact": {key: json.dumps(value) for key, value in UI_SETTINGS.items()},
        "page": [PAGE_PREFIX, PAGE_SUFFIX, json.dumps({"selectedColumns": default_columns()})],
    }
    return f"""(function () {{
  var s = {json.dumps(settings)};
  var read = Storage.prototype.getItem;
  Storage.prototype.getItem = function (key) {{
    var value = read.call(this, key);
    if (value !== null || this !== window.localStorage || typeof key !== "string") return value;
    if (Object.prototype.hasOwnProperty.call(s.exact, key)) return s.exact[key];
    var p = s.page;
    if (key.indexOf(p[0]) === 0 && key.slice(-p[1].length) === p[1]) return p[2];
    return value;
  }};
}})();
"""


def _prefix() -> str:
    from mlflow.server import STATIC_PREFIX_ENV_VAR

    return os.environ.get(STATIC_PREFIX_ENV_VAR, "").rstrip("/")


class UIDefaults:
    """ASGI middleware: serves the script and adds it to the UI's page (``/``); everything else goes to MLflow."""

    def __init__(self, inner):
        self.inner = inner
        self.prefix = _prefix()
        self.script = defaults_script().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if scope["path"] == self.prefix + SCRIPT_PATH:
                return await _respond(send, self.script, "text/javascript; charset=utf-8")
            if scope["path"] in (self.prefix + "/", self.prefix + "/index.html"):
                return await self._page(scope, receive, send)
        await self.inner(scope, receive, send)

    async def _page(self, scope, receive, send):
        """MLflow's page with our script tag before its bundle (a plain script runs before deferred ones)."""
        start, body = {}, []

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.inner({**scope, "method": "GET"}, receive, keep)
        page = b"".join(body)
        tag = f'<script src="{self.prefix}{SCRIPT_PATH}"></script>'.encode()
        if start.get("status") == 200 and b"<head>" in page:
            page = page.replace(b"<head>", b"<head>" + tag, 1)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(page)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else page})


async def _respond(send, body: bytes, media_type: str) -> None:
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-cache")]  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _mlflow_app():
    from mlflow.server.fastapi_app import app as mlflow_app

    return mlflow_app


class _Lazy:
    """Import MLflow's server app on the first request (uvicorn imports this module in each worker)."""

    def __init__(self):
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = UIDefaults(_mlflow_app())
        await self._app(scope, receive, send)


app = _Lazy()
