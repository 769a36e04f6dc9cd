"""LLM reranking pieces: single-token verbalizer labels, answer-slot prompts and an offline tiny Qwen3."""
