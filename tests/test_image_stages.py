"""The images stage feeds `prepare --use_image`: items without a usable image are dropped, then the k-core again."""

from __future__ import annotations

import json
import logging

import pandas as pd
from conftest import random_log
from PIL import Image

from stages import cli

FLAGS = ["--dataset_code", "custom", "--custom_interactions", "log.csv", "--custom_items", "items.csv",
         "--min_uc", "3", "--min_sc", "2"]  # fmt: skip
PREP = "data/preprocessed/custom_min_rating0-min_uc3-min_sc2"


def write_custom(root, with_image) -> None:
    """40 users x 30 items; items whose number passes ``with_image`` get a local image, one gets a corrupt file."""
    rows = random_log(40, 30, (5, 12), seed=5)
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(root / "log.csv", index=False)
    (root / "pics").mkdir()
    items = []
    for i in range(30):
        path = ""
        if with_image(i):
            path = f"pics/{i}.png"
            Image.new("RGB", (300, 150), (i * 8, 40, 200)).save(root / path)
        items.append({"item": f"i{i:03d}", "title": f"Thing {i}", "image_path": path})
    items[29]["image_path"] = "pics/broken.jpg"
    (root / "pics/broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    pd.DataFrame(items).to_csv(root / "items.csv", index=False)


def test_use_image_keeps_only_items_with_an_image_and_reruns_the_kcore(workdir, capsys):
    write_custom(workdir, lambda i: i % 4 != 0)
    assert cli.main(["download", *FLAGS]) == 0
    assert cli.main(["images", *FLAGS]) == 0
    assert "missing_url" in capsys.readouterr().out
    manifest = pd.read_parquet(workdir / "data/images/custom/manifest.parquet").set_index("raw_id")
    assert manifest.loc["i029", "status"] == "corrupt" and manifest.loc["i004", "status"] == "missing_url"
    assert manifest.loc["i001", "status"] == "ok"
    saved = Image.open(workdir / "data/images/custom" / manifest.loc["i001", "file"])
    assert saved.size == (224, 112)  # 300 x 150 fitted into 224 x 224, aspect kept

    assert cli.main(["prepare", *FLAGS]) == 0
    everything = pd.read_parquet(workdir / PREP / "items.parquet")
    assert cli.main(["prepare", *FLAGS, "--use_image"]) == 0
    kept = pd.read_parquet(workdir / PREP / "items.parquet")
    ok = set(manifest.index[manifest["status"] == "ok"])
    assert set(kept["raw_id"]) <= ok and len(kept) < len(everything)
    assert {"i000", "i004", "i029"}.isdisjoint(kept["raw_id"])
    steps = [s["step"] for s in json.loads((workdir / PREP / "stats.json").read_text())["filters"]]
    assert steps.index("use_image") < steps.index("k_core")
    inter = pd.read_parquet(workdir / PREP / "interactions.parquet")
    assert inter.groupby("item_id").size().min() >= 2 and inter.groupby("user_id").size().min() >= 3


def test_use_image_without_the_images_stage_names_it(workdir, caplog):
    write_custom(workdir, lambda i: True)
    assert cli.main(["download", *FLAGS]) == 0
    with caplog.at_level(logging.ERROR):
        assert cli.main(["prepare", *FLAGS, "--use_image"]) == 1
    message = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "recsys images" in message
    assert not (workdir / PREP).exists()
