"""The item-image step against a local HTTP server on 127.0.0.1: statuses, resizing, retries, resuming."""

from __future__ import annotations

import io
import random
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from PIL import Image

from recsys_core.config import FeaturesConfig
from recsys_core.data import images
from recsys_core.data.images import (
    COLUMNS,
    FILES,
    MANIFEST,
    STATUSES,
    download_images,
    file_name,
    load_manifest,
    usable_raw_ids,
)
from recsys_core.errors import MissingArtifactError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(width: int, height: int, color=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", (width, height), color), "JPEG")


def png_half_transparent(width: int = 64, height: int = 64) -> bytes:
    """Left half fully transparent, right half opaque blue."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (width // 2, 0, width, height))
    return encode(image, "PNG")


def big_png(width: int = 4000, height: int = 3000) -> bytes:
    """A large photo-sized PNG, quick to make: two colour blocks on a gradient-free background."""
    image = Image.new("RGB", (width, height), (20, 120, 40))
    image.paste((240, 240, 0), (0, 0, width // 3, height // 2))
    return encode(image, "PNG", compress_level=1)


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about width*height*3 bytes."""
    return encode(Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3)), "PNG")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    ctype: str | None = "image/jpeg"
    length: bool = True  # send Content-Length; without it the body ends when the connection closes
    delay: float = 0.0  # seconds to wait before answering
    trickle: float = 0.0  # seconds between 256-byte pieces of the body (each piece well within the timeout)


class ImageServer:
    """Answers each path with a scripted list of replies (the last one repeats) and counts requests per path."""

    def __init__(self):
        self.routes: dict[str, list[Reply]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                    plan = outer.routes.get(self.path, [Reply(404, b"not found", "text/plain")])
                    reply = plan.pop(0) if len(plan) > 1 else plan[0]
                if reply.delay:
                    outer.stop.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    if reply.ctype:
                        self.send_header("Content-Type", reply.ctype)
                    if reply.length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.trickle:
                        for start in range(0, len(reply.body), 256):
                            self.wfile.write(reply.body[start : start + 256])
                            self.wfile.flush()
                            outer.stop.wait(reply.trickle)
                    else:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, too large)
                    pass
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies)
        return self.url(path)

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ImageServer()
    yield srv
    srv.close()


def cfg(**overrides) -> FeaturesConfig:
    settings = {"image_size": 224, "image_workers": 4, "image_timeout": 2.0, "image_retries": 0, "image_max_mb": 20.0}
    return FeaturesConfig(**(settings | overrides))


def items(*rows: tuple[str, str] | tuple[str, str, str]) -> pd.DataFrame:
    """(raw_id, image_url[, image_path]) rows."""
    return pd.DataFrame(
        [(r[0], r[1], r[2] if len(r) > 2 else "") for r in rows], columns=["raw_id", "image_url", "image_path"]
    )


def run(frame: pd.DataFrame, dest, settings: FeaturesConfig | None = None, **kwargs) -> pd.DataFrame:
    return download_images(frame, dest, settings or cfg(), progress=False, **kwargs)


def row(manifest: pd.DataFrame, raw_id: str) -> dict:
    found = manifest[manifest["raw_id"] == raw_id]
    assert len(found) == 1, f"{raw_id}: {len(found)} rows"
    return found.iloc[0].to_dict()


def saved(dest, manifest: pd.DataFrame, raw_id: str) -> Image.Image:
    with Image.open(dest / row(manifest, raw_id)["file"]) as image:
        image.load()
        return image


def test_jpeg_is_shrunk_to_fit_keeping_the_aspect_ratio(server, tmp_path):
    url = server.serve("/a.jpg", Reply(body=jpeg(400, 200)))
    manifest = run(items(("A1", url)), tmp_path)
    got = row(manifest, "A1")
    assert got["status"] == "ok" and got["reason"] == "" and got["source"] == url
    assert (got["width"], got["height"], got["orig_width"], got["orig_height"]) == (224, 112, 400, 200)
    assert got["file"] == f"{FILES}/A1.jpg"
    image = saved(tmp_path, manifest, "A1")
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (224, 112)
    assert list(manifest.columns) == list(COLUMNS)


def test_png_with_alpha_becomes_rgb_jpeg_on_white(server, tmp_path):
    url = server.serve("/a.png", Reply(body=png_half_transparent(), ctype="image/png"))
    manifest = run(items(("p", url)), tmp_path)
    image = saved(tmp_path, manifest, "p")
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 64)
    left, right = image.getpixel((8, 32)), image.getpixel((56, 32))
    assert all(c > 245 for c in left), left  # transparent -> white, not black
    assert right[2] > 200 and right[0] < 40 and right[1] < 40, right


def test_small_image_is_not_upscaled(server, tmp_path):
    url = server.serve("/s.jpg", Reply(body=jpeg(100, 50)))
    manifest = run(items(("s", url)), tmp_path)
    got = row(manifest, "s")
    assert (got["status"], got["width"], got["height"]) == ("ok", 100, 50)
    assert saved(tmp_path, manifest, "s").size == (100, 50)


def test_not_found_is_final_and_not_asked_again(server, tmp_path):
    url = server.url("/gone.jpg")  # no route: 404
    settings = cfg(image_retries=2)
    got = row(run(items(("g", url)), tmp_path, settings), "g")
    assert got["status"] == "http_error" and got["reason"].startswith("HTTP 404") and got["file"] == ""
    assert server.hits["/gone.jpg"] == 1  # a 404 is not retried
    run(items(("g", url)), tmp_path, settings)
    assert server.hits["/gone.jpg"] == 1


def test_a_server_that_trickles_bytes_is_cut_off(server, tmp_path):
    body = encode(Image.effect_noise((128, 128), 80).convert("RGB"), "JPEG")  # ~8 KB: ~32 pieces, 0.05 s apart
    assert len(body) > 8000
    url = server.serve("/trickle.jpg", Reply(body=body, trickle=0.05))
    got = row(run(items(("s", url)), tmp_path, cfg(image_timeout=0.3, image_retries=0)), "s")
    assert got["status"] == "timeout" and "image_timeout" in got["reason"], got


def test_timeout_is_recorded_and_retried_on_the_next_run(server, tmp_path):
    slow = Reply(body=jpeg(40, 40), delay=1.5)
    url = server.serve("/slow.jpg", slow, slow, Reply(body=jpeg(40, 40)))
    settings = cfg(image_timeout=0.3, image_retries=1)
    got = row(run(items(("t", url)), tmp_path, settings), "t")
    assert got["status"] == "timeout" and "0.3" in got["reason"]
    assert server.hits["/slow.jpg"] == 2  # the first try and one retry
    got = row(run(items(("t", url)), tmp_path, settings), "t")
    assert got["status"] == "ok" and server.hits["/slow.jpg"] == 3


def test_server_error_then_ok_thanks_to_the_retry(server, tmp_path):
    url = server.serve("/flaky.jpg", Reply(500, b"", "text/plain"), Reply(body=jpeg(50, 50)))
    got = row(run(items(("f", url)), tmp_path, cfg(image_retries=1)), "f")
    assert got["status"] == "ok" and server.hits["/flaky.jpg"] == 2


def test_server_error_without_retries_left_is_retried_on_the_next_run(server, tmp_path):
    url = server.serve("/down.jpg", Reply(503, b"", "text/plain"), Reply(body=jpeg(50, 50)))
    got = row(run(items(("d", url)), tmp_path), "d")
    assert got["status"] == "http_error" and got["reason"].startswith("HTTP 503")
    got = row(run(items(("d", url)), tmp_path), "d")
    assert got["status"] == "ok" and server.hits["/down.jpg"] == 2


def test_corrupt_bytes_and_html_pages_are_refused(server, tmp_path):
    bad = server.serve("/bad.jpg", Reply(body=b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20))
    cut = server.serve("/cut.jpg", Reply(body=jpeg(300, 300)[:400]))
    page = server.serve("/page", Reply(body=b"<html><body>gone</body></html>", ctype="text/html; charset=utf-8"))
    manifest = run(items(("bad", bad), ("cut", cut), ("page", page)), tmp_path)
    for raw_id in ("bad", "cut"):
        got = row(manifest, raw_id)
        assert got["status"] == "corrupt" and got["reason"] and got["file"] == "", got
        assert "0x" not in got["reason"]  # no object addresses: reruns give the same bytes
    got = row(manifest, "page")
    assert got["status"] == "not_image" and "text/html" in got["reason"]
    assert list((tmp_path / FILES).iterdir()) == []


def test_large_photo_is_resized_to_fit(server, tmp_path):
    url = server.serve("/big.png", Reply(body=big_png(), ctype="image/png"))
    manifest = run(items(("big", url)), tmp_path)
    got = row(manifest, "big")
    assert got["status"] == "ok", got
    assert (got["orig_width"], got["orig_height"], got["width"], got["height"]) == (4000, 3000, 224, 168)
    image = saved(tmp_path, manifest, "big")
    assert image.size == (224, 168)
    assert image.getpixel((10, 10))[0] > 200 and image.getpixel((200, 150))[1] > 90  # both blocks survive


def test_body_over_the_size_limit_is_too_large(server, tmp_path):
    body = noise_png(200, 200)
    assert len(body) > 60_000
    declared = server.serve("/declared.png", Reply(body=body, ctype="image/png"))
    streamed = server.serve("/streamed.png", Reply(body=body, ctype=None, length=False))
    small = server.serve("/small.jpg", Reply(body=jpeg(30, 30)))
    manifest = run(items(("declared", declared), ("streamed", streamed), ("small", small)), tmp_path,
                   cfg(image_max_mb=0.05))  # fmt: skip
    for raw_id in ("declared", "streamed"):
        got = row(manifest, raw_id)
        assert got["status"] == "too_large" and "0.05 MB" in got["reason"], got
    assert row(manifest, "small")["status"] == "ok"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_guard(server, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    over = server.serve("/over.jpg", Reply(body=jpeg(120, 100)))  # 1.2x the limit: Pillow only warns
    far = server.serve("/far.jpg", Reply(body=jpeg(400, 200)))  # 8x the limit: Pillow raises
    fine = server.serve("/fine.jpg", Reply(body=jpeg(90, 90)))
    manifest = run(items(("over", over), ("far", far), ("fine", fine)), tmp_path)
    assert row(manifest, "over")["status"] == "too_large"
    assert row(manifest, "far")["status"] == "too_large"
    assert row(manifest, "fine")["status"] == "ok"


def test_missing_url_and_local_paths(server, tmp_path):
    base = tmp_path / "raw"
    (base / "imgs").mkdir(parents=True)
    (base / "imgs" / "a.png").write_bytes(encode(Image.new("RGB", (300, 600), (0, 90, 0)), "PNG"))
    url = server.serve("/unused.jpg", Reply(body=jpeg(20, 20)))
    frame = items(("none", ""), ("local", "", "imgs/a.png"), ("both", url, "imgs/a.png"), ("lost", "", "imgs/no.png"))
    manifest = run(frame, tmp_path / "out", base_dir=base)
    got = row(manifest, "none")
    assert (got["status"], got["source"], got["file"]) == ("missing_url", "", "")
    got = row(manifest, "local")
    assert (got["status"], got["source"], got["width"], got["height"]) == ("ok", "imgs/a.png", 112, 224)
    assert row(manifest, "both")["source"] == "imgs/a.png"  # the local file wins over the URL
    assert server.hits == {}
    got = row(manifest, "lost")
    assert got["status"] == "missing_url" and "not found" in got["reason"]
    assert usable_raw_ids(manifest) == {"local", "both"}


def test_second_run_makes_no_new_requests_and_writes_the_same_manifest(server, tmp_path):
    frame = items(
        ("ok1", server.serve("/1.jpg", Reply(body=jpeg(400, 300)))),
        ("ok2", server.serve("/2.png", Reply(body=png_half_transparent(), ctype="image/png"))),
        ("gone", server.url("/gone.jpg")),
        ("bad", server.serve("/bad.jpg", Reply(body=b"garbage" * 50))),
        ("page", server.serve("/page", Reply(body=b"<html></html>", ctype="text/html"))),
        ("none", ""),
    )
    first = run(frame, tmp_path)
    hits, first_bytes = dict(server.hits), (tmp_path / MANIFEST).read_bytes()
    assert sorted(first["raw_id"]) == list(first["raw_id"])
    second = run(frame, tmp_path)
    assert server.hits == hits
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(second, load_manifest(tmp_path))
    assert (tmp_path / MANIFEST).read_bytes() == first_bytes
    assert set(first["status"]) <= set(STATUSES)
    files = sorted((tmp_path / FILES).iterdir())
    assert [f.name for f in files] == ["ok1.jpg", "ok2.jpg"]  # no temporary files left behind
    for path in files:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "JPEG" and max(image.size) <= 224


def test_removed_file_or_new_size_is_fetched_again(server, tmp_path):
    frame = items(("x", server.serve("/x.jpg", Reply(body=jpeg(400, 200)))))
    run(frame, tmp_path)
    (tmp_path / FILES / "x.jpg").unlink()
    assert row(run(frame, tmp_path), "x")["status"] == "ok" and server.hits["/x.jpg"] == 2
    got = row(run(frame, tmp_path, cfg(image_size=64)), "x")
    assert (got["width"], got["height"]) == (64, 32) and server.hits["/x.jpg"] == 3


def test_rows_of_items_not_asked_for_are_kept(server, tmp_path):
    a, b = server.serve("/a.jpg", Reply(body=jpeg(20, 20))), server.serve("/b.jpg", Reply(body=jpeg(20, 20)))
    run(items(("a", a), ("b", b)), tmp_path)
    manifest = run(items(("a", a)), tmp_path)
    assert list(manifest["raw_id"]) == ["a", "b"] and list(load_manifest(tmp_path)["raw_id"]) == ["a", "b"]
    assert server.hits == {"/a.jpg": 1, "/b.jpg": 1}


def test_interrupted_run_keeps_what_is_done(server, tmp_path, monkeypatch):
    frame = items(*[(name, server.serve(f"/{name}.jpg", Reply(body=jpeg(30, 30)))) for name in "abcd"])
    real = images._process

    def interrupted(job, *args):
        if job.raw_id == "c":
            raise KeyboardInterrupt
        return real(job, *args)

    monkeypatch.setattr(images, "_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(frame, tmp_path, cfg(image_workers=1))
    partial = load_manifest(tmp_path)
    assert {"a", "b"} <= usable_raw_ids(partial) and "c" not in set(partial["raw_id"])
    monkeypatch.setattr(images, "_process", real)
    done_before = dict(server.hits)
    assert usable_raw_ids(run(frame, tmp_path)) == {"a", "b", "c", "d"}
    assert server.hits["/a.jpg"] == done_before["/a.jpg"] == 1 and server.hits["/c.jpg"] == 1


def test_unsafe_raw_ids_get_hashed_file_names(tmp_path):
    assert file_name("B00ABC-1.x_y") == "B00ABC-1.x_y"
    for raw_id in ("a/b", "..", ".", "x" * 81, "é", "a b"):
        name = file_name(raw_id)
        assert len(name) == 20 and all(c in "0123456789abcdef" for c in name), raw_id
    (tmp_path / "p.png").write_bytes(encode(Image.new("RGB", (10, 10)), "PNG"))
    manifest = run(items(("../evil", "", str(tmp_path / "p.png"))), tmp_path / "out", base_dir=tmp_path)
    assert row(manifest, "../evil")["file"] == f"{FILES}/{file_name('../evil')}.jpg"
    assert (tmp_path / "out" / FILES / f"{file_name('../evil')}.jpg").is_file()


def test_load_manifest_without_a_run_names_the_stage(tmp_path):
    with pytest.raises(MissingArtifactError, match="recsys images"):
        load_manifest(tmp_path)
