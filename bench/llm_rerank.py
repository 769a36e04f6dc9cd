"""Benchmark: LLM reranking by one forward pass (label logits at the answer slot) against producing a ranked list
with `generate` on the same prompts.

Prompts are built from ML-100K titles (the prepared dataset when present, else generated titles) with the project's
prompt builder and verbalizer labels, at 20 and 50 candidates. Prints tokens per prompt, prompts per second and
candidates per second scored, and peak memory (RSS; GPU allocator peak on CUDA).

    .venv/bin/python bench/llm_rerank.py                     # the offline smoke model (real Qwen3 architecture, tiny)
    .venv/bin/python bench/llm_rerank.py --size 0.6b --device cuda [--quantize] [--compile]
                                                             # random weights at Qwen3-0.6B's published size

The generate baseline asks for a ranked list of labels ("A, C, B, ..."): 2 tokens per candidate (label + comma),
forced to full length so that random weights cost what a real model would.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.rerank.llm.labels import choose_labels  # noqa: E402
from recsys_core.rerank.llm.model import COMPILE_PAD_MULTIPLE, compile_layers  # noqa: E402
from recsys_core.rerank.llm.prompt import build_prompts, left_pad  # noqa: E402
from recsys_core.rerank.llm.tiny import load_qwen_tokenizer, write_tiny_qwen3  # noqa: E402

# Qwen3-0.6B's published configuration (config.json of Qwen/Qwen3-0.6B).
QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)  # fmt: skip


def titles(n: int, rng: np.random.Generator) -> list[str]:
    """ML-100K titles (with genres and year) when the prepared dataset is here, else generated ones."""
    items = ROOT / "data/preprocessed/ml-100k_min_rating0-min_uc5-min_sc5/items.parquet"
    if items.exists():
        import pandas as pd

        texts = pd.read_parquet(items)["text"].tolist()
        return [texts[i] for i in rng.integers(0, len(texts), size=n)]
    return [f"Movie number {i} (19{i % 100:02d}). Genres: Drama, Comedy." for i in rng.integers(0, 5000, size=n)]


def build_model(size: str, device: torch.device, quantize: bool, workdir: Path):
    """The model under test: the smoke model folder, or random weights at 0.6B size (through a saved folder when
    4-bit quantization is asked, since bitsandbytes quantizes at load time)."""
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if size == "tiny":
        folder = write_tiny_qwen3(workdir / "tiny", seed=0)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = Qwen3Config(**QWEN3_06B, dtype=dtype)
    if not quantize:
        return Qwen3ForCausalLM(config).to(device=device, dtype=dtype).eval()
    from transformers import BitsAndBytesConfig

    Qwen3ForCausalLM(config).to(dtype=torch.bfloat16).save_pretrained(workdir / "random-0.6b")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(workdir / "random-0.6b", quantization_config=nf4,
                                                device_map={"": device.index or 0}).eval()  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(model, tokenizer, device, n_candidates: int, n_prompts: int, batch: int, gen_prompts: int,
        rng: np.random.Generator, multiple: int = 1) -> dict:  # fmt: skip
    labels = choose_labels(tokenizer, n_candidates)
    histories = [titles(5, rng) for _ in range(n_prompts)]
    candidates = [titles(n_candidates, rng) for _ in range(n_prompts)]
    prompts = build_prompts(tokenizer, histories, candidates, labels, max_history=5, max_seq_length=2048)
    label_tensor = torch.as_tensor([lab.token_id for lab in labels], device=device)
    lengths = [len(p.input_ids) for p in prompts]

    def forward(chunk):
        padded = {k: v.to(device) for k, v in left_pad(chunk, tokenizer.pad_token_id, multiple).items()}
        with torch.no_grad():
            logits = model(**padded, logits_to_keep=1).logits[:, -1]
        return logits.index_select(1, label_tensor).float()

    began = time.perf_counter()
    forward(prompts[:batch])  # warm-up (and compilation)
    sync(device)
    warm_s = time.perf_counter() - began
    for start in range(batch, 3 * batch, batch):  # a few more: kernel selection for other lengths
        forward(prompts[start : start + batch])
    began = time.perf_counter()
    for start in range(0, n_prompts, batch):
        forward(prompts[start : start + batch]).cpu()
    sync(device)
    score_s = time.perf_counter() - began

    new_tokens = 2 * n_candidates
    gen = prompts[:gen_prompts]
    padded = {k: v.to(device) for k, v in left_pad(gen[:batch], tokenizer.pad_token_id).items()}
    with torch.no_grad():
        model.generate(**padded, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)  # fmt: skip  # warm-up
    sync(device)
    began = time.perf_counter()
    for start in range(0, len(gen), batch):
        padded = {k: v.to(device) for k, v in left_pad(gen[start : start + batch], tokenizer.pad_token_id).items()}
        with torch.no_grad():
            model.generate(**padded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    sync(device)
    gen_s = time.perf_counter() - began
    return {"candidates": n_candidates, "tokens": float(np.mean(lengths)), "tokens_max": max(lengths),
            "score_pps": n_prompts / score_s, "score_cps": n_prompts * n_candidates / score_s,
            "gen_pps": len(gen) / gen_s, "warm_s": warm_s, "shortened": sum(p.shortened.any for p in prompts)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "0.6b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantize", action="store_true", help="4-bit NF4 through bitsandbytes (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--gen_prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    tokenizer = load_qwen_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.size, device, args.quantize, Path(tmp))
        if args.compile:
            compile_layers(model)
        params = sum(p.numel() for p in model.parameters())
        rng = np.random.default_rng(0)
        multiple = COMPILE_PAD_MULTIPLE if args.compile else 1
        rows = [run(model, tokenizer, device, k, args.prompts, args.batch, args.gen_prompts, rng, multiple)
                for k in (20, 50)]  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    name = f"Qwen3 {args.size} ({params / 1e6:.1f} M parameters, random weights)"
    mode = ", 4-bit NF4" * args.quantize + ", torch.compile" * args.compile
    print(f"{name} on {device}{mode}; batch {args.batch}; peak {peak:.0f} MB RSS" + (f", {gpu:.0f} MB GPU" * bool(gpu)))
    print("| candidates | tokens/prompt (max) | forward: prompts/s | forward: candidates/s | generate: prompts/s | "
          "speed-up | shortened | first call s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['candidates']} | {r['tokens']:.0f} ({r['tokens_max']}) | {r['score_pps']:.1f} | "
            f"{r['score_cps']:.0f} | {r['gen_pps']:.2f} | {r['score_pps'] / r['gen_pps']:.0f}x | {r['shortened']} | "
            f"{r['warm_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
