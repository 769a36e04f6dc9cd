"""Benchmark: the vision-language pieces with random weights: BLIP-2 captions and Qwen3-VL summaries (images per
second) on the smoke models, and qwen3vl reranking (prompts per second, tokens per prompt) in every mode.

    .venv/bin/python bench/vlm.py                              # smoke models on the CPU
    .venv/bin/python bench/vlm.py --device cuda --size 2b      # + reranking at Qwen3-VL-2B's published size

Items are generated: 224x224 product-like pictures (coloured shapes), titles, captions and summaries of realistic
length; 5 history items and 20 candidates per prompt, batch 4. With ``--size 2b`` the prompts are built exactly as
the smoke model's (same tokenizer and processor) and scored by a randomly initialised Qwen3-VL at the 2B model's
published configuration (bf16).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.config import Config  # noqa: E402
from recsys_core.features.blip2_tiny import write_tiny_blip2  # noqa: E402
from recsys_core.features.captions import caption_images, load_blip2  # noqa: E402
from recsys_core.features.summaries import SummaryInput, summarise  # noqa: E402
from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl  # noqa: E402
from recsys_core.rerank.llm.vl_model import load_vl_model  # noqa: E402
from recsys_core.rerank.qwen3vl import Qwen3VLReranker  # noqa: E402

MODES = ("text_only", "caption", "semantic_summary_small", "semantic_summary", "raw_image")
# Qwen/Qwen3-VL-2B-Instruct's config.json (text and vision towers).
QWEN3VL_2B_TEXT = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, hidden_act="silu",
                       max_position_embeddings=262144, rms_norm_eps=1e-6, attention_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_interleaved": True,
                                        "mrope_section": [24, 20, 20]})  # fmt: skip
QWEN3VL_2B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                         patch_size=16, spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu_pytorch_tanh",
                         deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304)  # fmt: skip
WORDS = "red blue matte glossy leather cotton vintage modern compact deluxe travel organic classic slim".split()


def make_images(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = Image.new("RGB", (224, 224), tuple(int(c) for c in rng.integers(150, 256, 3)))
        draw = ImageDraw.Draw(image)
        box = sorted(rng.integers(20, 200, 2).tolist())
        draw.ellipse([box[0], box[0], box[1] + 20, box[1] + 20], fill=tuple(int(c) for c in rng.integers(0, 150, 3)))
        path = folder / f"{i + 1}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def phrase(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def items_frame(paths: list[Path], rng: np.random.Generator) -> pd.DataFrame:
    n = len(paths)
    return pd.DataFrame({
        "item_id": np.arange(1, n + 1), "raw_id": [f"B{i:05d}" for i in range(n)],
        "title": [f"{phrase(rng, 3).title()} Item {i}" for i in range(n)], "text": [""] * n,
        "caption": [f"a {phrase(rng, 6)} on a white background" for _ in range(n)],
        "semantic_summary": [". ".join(f"This {phrase(rng, 8)}" for _ in range(4)) for _ in range(n)],
        "semantic_summary_small": [f"A {phrase(rng, 14)}." for _ in range(n)],
        "image_path": [str(p) for p in paths],
    })  # fmt: skip


def timed(fn, device: torch.device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def bench_generation(workdir: Path, paths: list[Path], device: torch.device, cfg: Config) -> list[tuple]:
    """Images per second for captions and both summaries, smoke models (warm: the first batch is not timed)."""
    rows = []
    model, processor = load_blip2(str(write_tiny_blip2(workdir / "blip2")), device)
    caption_images(model, processor, paths[:8], 8, cfg.features.caption_max_new_tokens)
    _, seconds = timed(lambda: caption_images(model, processor, paths, 8, cfg.features.caption_max_new_tokens), device)
    rows.append(("captions (BLIP-2 smoke)", len(paths) / seconds))
    model, processor = load_vl_model(str(write_tiny_qwen3vl(workdir / "qwen3vl")), device,
                                     min_pixels=cfg.features.vl_min_pixels, max_pixels=cfg.features.vl_max_pixels)  # fmt: skip
    inputs = [SummaryInput(title=f"Item {i}", image=p) for i, p in enumerate(paths)]
    for kind in ("semantic_summary", "semantic_summary_small"):
        batches = [inputs[s : s + cfg.features.semantic_summary_batch_size] for s in range(0, len(inputs),
                   cfg.features.semantic_summary_batch_size)]  # fmt: skip
        summarise(model, processor, batches[0], cfg.features, kinds=(kind,))
        _, seconds = timed(lambda k=kind, bs=batches: [summarise(model, processor, b, cfg.features, kinds=(k,))
                                                       for b in bs], device)  # fmt: skip
        rows.append((f"{kind} (Qwen3-VL smoke)", len(paths) / seconds))
    return rows


def big_model(device: torch.device):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from recsys_core.rerank.llm.tiny import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}  # fmt: skip
    config = Qwen3VLConfig(text_config=QWEN3VL_2B_TEXT, vision_config=QWEN3VL_2B_VISION, **ids,
                           tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    return model.eval()


def bench_rerank(workdir: Path, items: pd.DataFrame, device: torch.device, size: str, n_prompts: int,
                 rng: np.random.Generator) -> tuple[list[tuple], int]:  # fmt: skip
    folder = workdir / "qwen3vl"
    if not folder.exists():
        write_tiny_qwen3vl(folder)
    big = big_model(device) if size == "2b" else None
    params = sum(p.numel() for p in big.parameters()) if big is not None else 0
    rows = []
    for mode in MODES:
        cfg = Config.model_validate({"llm": {"qwen3vl_model": str(folder), "qwen_mode": mode, "qwen_max_candidates": 20},
                                     "rerank": {"rerank_batch_size": 4}})  # fmt: skip
        reranker = Qwen3VLReranker(len(items), Qwen3VLReranker.hyperparameters(cfg, "bench"), device, items=items)
        if big is not None:
            reranker.model = big
        histories = [rng.choice(np.arange(1, len(items) + 1), 5, replace=False) for _ in range(n_prompts)]
        cands = np.stack([rng.choice(np.arange(1, len(items) + 1), 20, replace=False) for _ in range(n_prompts)])
        tokens = [len(p.input_ids) for p in reranker.prompts(histories, cands)]
        reranker.score(histories[:4], cands[:4])  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _, seconds = timed(lambda r=reranker, h=histories, c=cands: r.score(h, c), device)
        gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        rows.append((mode, float(np.mean(tokens)), n_prompts / seconds, 20 * n_prompts / seconds, gpu))
    return rows, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny", help="reranking model size")
    parser.add_argument("--images", type=int, default=32, help="images to caption / summarise")
    parser.add_argument("--prompts", type=int, default=16, help="reranking prompts per mode")
    parser.add_argument("--skip_generation", action="store_true", help="only the reranking rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    cfg = Config()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        paths = make_images(workdir / "images", max(args.images, 60), rng)
        generation = [] if args.skip_generation else bench_generation(workdir, paths[: args.images], device, cfg)
        reranking, params = bench_rerank(workdir, items_frame(paths, rng), device, args.size, args.prompts, rng)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"\nvision-language bench on {where}; peak RSS {peak:.2f} GB")
    if generation:
        print("| generation, smoke model | images/s |\n|---|---|")
        for name, rate in generation:
            print(f"| {name} | {rate:.1f} |")
    model = f"random Qwen3-VL-2B size ({params / 1e9:.2f} B params, bf16)" if params else "Qwen3-VL smoke model"
    print(f"\nqwen3vl reranking, {model}, 5 history items + 20 candidates, batch 4:")
    print("| mode | tokens/prompt | prompts/s | candidates/s | GPU peak GB |\n|---|---|---|---|---|")
    for mode, tokens, pps, cps, gpu in reranking:
        print(f"| {mode} | {tokens:.0f} | {pps:.2f} | {cps:.0f} | {gpu:.2f} |")


if __name__ == "__main__":
    main()
