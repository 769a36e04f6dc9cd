"""The HTTP download path against a local server on 127.0.0.1: retries, failures, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recsys_core.data.download import download
from recsys_core.errors import ChecksumError, DownloadError

PAYLOAD = b"A1,B1,5.0,1369699200\n" * 5000


class Server:
    """Answers each path with a scripted list of behaviours, one per request."""

    def __init__(self):
        self.script: dict[str, list[str]] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                plan = outer.script.get(self.path, ["404"])
                action = plan.pop(0) if len(plan) > 1 else plan[0]
                if action == "ok":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD)
                elif action == "short":  # promises more bytes than it sends, then hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD[:1000])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.send_response(int(action))
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def test_downloads_and_records_sha256(server, tmp_path):
    server.script["/f.csv"] = ["ok"]
    got = download(server.url("/f.csv"), tmp_path / "f.csv")
    assert (tmp_path / "f.csv").read_bytes() == PAYLOAD
    assert got.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and got.size == len(PAYLOAD)
    assert got.origin == "downloaded"
    assert [p.name for p in tmp_path.iterdir()] == ["f.csv"]  # no temporary file left


def test_retries_server_errors_with_backoff(server, tmp_path):
    server.script["/f.csv"] = ["503", "500", "ok"]
    download(server.url("/f.csv"), tmp_path / "f.csv", retries=3, backoff=0.01)
    assert server.hits["/f.csv"] == 3
    assert (tmp_path / "f.csv").read_bytes() == PAYLOAD


def test_not_found_fails_at_once_naming_url_and_where_to_place_it(server, tmp_path):
    server.script["/gone.csv"] = ["404"]
    with pytest.raises(DownloadError) as err:
        download(server.url("/gone.csv"), tmp_path / "gone.csv", retries=3, backoff=0.01)
    assert server.hits["/gone.csv"] == 1
    assert server.url("/gone.csv") in str(err.value) and str((tmp_path / "gone.csv").resolve()) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_is_retried_then_fails_without_partial_file(server, tmp_path):
    server.script["/f.csv"] = ["short"]
    with pytest.raises(DownloadError, match="1000 bytes read|1000 of"):
        download(server.url("/f.csv"), tmp_path / "f.csv", retries=2, backoff=0.01)
    assert server.hits["/f.csv"] == 3
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_names_the_url(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        download("http://127.0.0.1:9/none.csv", tmp_path / "none.csv", retries=1, backoff=0.01, timeout=2)


def test_present_file_is_not_fetched_again(server, tmp_path):
    (tmp_path / "f.csv").write_bytes(b"placed by hand")
    got = download(server.url("/f.csv"), tmp_path / "f.csv")
    assert server.hits == {} and got.origin == "already present"
    assert (tmp_path / "f.csv").read_bytes() == b"placed by hand"


def test_checksum_mismatch_removes_the_download(server, tmp_path):
    server.script["/f.csv"] = ["ok"]
    with pytest.raises(ChecksumError, match="differs from the expected"):
        download(server.url("/f.csv"), tmp_path / "f.csv", expected_sha256="0" * 64)
    assert not (tmp_path / "f.csv").exists()
