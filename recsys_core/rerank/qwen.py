"""Qwen3 as a stage-2 reranker: one prompt per user, candidates named by single-token labels, LoRA fine-tuning.

The prompt (``recsys_core.rerank.llm.prompt``) lists the user's last ``max_history`` item titles and the candidate
titles, each after its label (``A. Toy Story (1995)``), and ends at the answer slot. One forward pass per prompt (no
generation): a candidate's score is the logit of its label's token at the last position; empty slots (id 0) are
-inf. Training minimises the cross-entropy over the candidates' label logits at that position (the true item's label
is the answer) with LoRA adapters (peft) on a frozen base model, through the shared training loop.

Each epoch draws fresh training examples from the train sequences (``training_examples``: the next item + negatives
the user never touched, shuffled by the epoch's generator), so a candidate's label changes from epoch to epoch.

The saved folder does not hold the base model: ``adapter/`` (peft ``save_pretrained``: adapter_config.json and
adapter_model.safetensors), ``tokenizer/``, ``items.json`` (item id -> prompt text, so that a loaded model scores
without the dataset) and ``config.json`` (method, n_items, hparams with the base model id or folder, the labels and
the LoRA settings). ``load`` rebuilds the base model from that id and puts the adapter on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.store import FeatureSet
from recsys_core.io import atomic_path
from recsys_core.model_base import CONFIG
from recsys_core.rerank.base import DEFAULT_EXAMPLES_PER_USER, Reranker, fit_on_lists, score_in_batches
from recsys_core.rerank.data import CandidateSet, ExampleSource
from recsys_core.rerank.llm.labels import Label, choose_labels, label_ids
from recsys_core.rerank.llm.model import COMPILE_PAD_MULTIPLE, compile_layers, load_causal_lm, resolve_model_id
from recsys_core.rerank.llm.prompt import Prompt, build_prompts, left_pad
from recsys_core.rerank.trainable import TrainableWeights
from recsys_core.training import EpochCallback, History, LoopSettings

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_DIR = "tokenizer"
ITEMS_FILE = "items.json"


def check_mode(mode: str) -> None:
    """The text modes are this reranker's (titles, or titles with BLIP-2 captions / Qwen3-VL summaries); raw_image
    needs a model that sees images."""
    if mode == "raw_image":
        raise ConfigError(
            "llm.qwen_mode 'raw_image' feeds item images to a vision-language model: that is the qwen3vl reranker "
            "(--rerank_method qwen3vl), not 'qwen'; the qwen reranker reads item texts (text_only, caption, "
            "semantic_summary, semantic_summary_small)"
        )


def item_texts_of(items: pd.DataFrame | Mapping[int, str], mode: str = "text_only") -> dict[int, str]:
    """id -> prompt text: from the items frame by mode (``features.texts.texts_for_mode``: the title, with the
    caption or summary the frame's generated-text columns hold), or a ready mapping."""
    if isinstance(items, pd.DataFrame):
        from recsys_core.features.texts import texts_for_mode

        return texts_for_mode(items, mode)
    return {int(k): "" if v is None else str(v) for k, v in items.items()}


class QwenReranker(Reranker):
    method = "qwen"

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu",
                 items: pd.DataFrame | Mapping[int, str] | None = None,
                 tokenizer_dir: Path | None = None):  # fmt: skip
        """``items``: the prepared items frame (or id -> text) whose titles the prompts show; also settable with
        :meth:`set_items`. ``tokenizer_dir``: a saved tokenizer to use instead of the base model's (``load``)."""
        self.n_items = n_items
        self.hparams = dict(hparams)
        self.device = torch.device(device)
        check_mode(self.hparams.get("mode", "text_only"))
        self.item_texts: dict[int, str] = {}
        self._tokenizer_dir = tokenizer_dir
        self.model = self.build_model()
        if items is not None:
            self.set_items(items)

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        q = cfg.llm
        check_mode(q.qwen_mode)
        return {
            "model": resolve_model_id(q.qwen_model),
            "mode": q.qwen_mode,
            # enough labels for the widest list this run scores when no cap is set
            "max_candidates": q.qwen_max_candidates
            or max(cfg.rerank.rerank_top_k, cfg.candidates.rerank_eval_candidates),
            "max_history": q.qwen_max_history,
            "max_seq_length": q.qwen_max_seq_length,
            "labels": None,  # chosen from the tokenizer at construction, then saved
            "use_quantization": q.use_quantization,
            "use_torch_compile": q.use_torch_compile,
            "lora_r": q.lora_r,
            "lora_alpha": q.lora_alpha,
            "lora_dropout": q.lora_dropout,
            "lora_target_modules": list(q.lora_target_modules),
            "examples_per_user": DEFAULT_EXAMPLES_PER_USER,
            "score_batch_size": cfg.rerank.rerank_batch_size,
        }

    def build_model(self) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        h = self.hparams
        base, tokenizer = load_causal_lm(h["model"], self.device, bool(h.get("use_quantization")), False)
        if self._tokenizer_dir is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer_dir))
        self.tokenizer = tokenizer
        self.labels: list[Label] = (label_ids(tokenizer, h["labels"]) if h.get("labels")
                                    else choose_labels(tokenizer, int(h["max_candidates"])))  # fmt: skip
        self.hparams["labels"] = [label.text for label in self.labels]
        self._label_tokens = torch.tensor([label.token_id for label in self.labels], device=self.device)
        if h.get("use_quantization"):
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
        lora = LoraConfig(r=int(h["lora_r"]), lora_alpha=int(h["lora_alpha"]), lora_dropout=float(h["lora_dropout"]),
                          target_modules=list(h["lora_target_modules"]), bias="none", task_type="CAUSAL_LM")  # fmt: skip
        try:
            net = get_peft_model(base, lora)
        except ValueError as err:
            raise ConfigError(f"llm.lora_target_modules {h['lora_target_modules']}: {err}") from err
        self.trainable = TrainableWeights(net, "check llm.lora_target_modules")
        self._pad_multiple = 1
        if h.get("use_torch_compile"):
            compile_layers(net)
            self._pad_multiple = COMPILE_PAD_MULTIPLE
        return net

    # ---- items and prompts ----

    def set_items(self, items: pd.DataFrame | Mapping[int, str]) -> None:
        """The texts the prompts show: the prepared items frame (item_id, title, and the generated-text columns of
        ``features.texts.attach_generated_texts`` for the caption / summary modes) or a mapping id -> text."""
        self.item_texts = item_texts_of(items, self.hparams.get("mode", "text_only"))

    def _texts(self, ids) -> list[str]:
        return [self.item_texts.get(int(i), "") for i in ids]

    def _check_ready(self, width: int) -> None:
        if not self.item_texts:
            raise MissingArtifactError(
                "the qwen reranker has no item texts: pass the prepared items frame (items=... or set_items(items))"
            )
        if width > len(self.labels):
            raise ConfigError(
                f"candidate lists of {width} items, but the qwen reranker names at most {len(self.labels)} "
                f"candidates per prompt (llm.qwen_max_candidates={self.hparams.get('max_candidates')}): raise "
                f"--qwen_max_candidates to {width} or shorten the lists (rerank_top_k / rerank_eval_candidates)"
            )

    def prompts(self, histories: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> list[Prompt]:
        """One prompt per row; ``candidates`` rows hold real ids only (no 0), named by the labels in order."""
        keep = int(self.hparams["max_history"])
        return build_prompts(self.tokenizer, [self._texts(np.asarray(h)[-keep:]) for h in histories],
                             [self._texts(c) for c in candidates], self.labels, keep,
                             int(self.hparams["max_seq_length"]))  # fmt: skip

    def answer_logits(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(B, V) float logits at the answer slot (the last prompt position), one forward pass for the batch."""
        batch = left_pad(prompts, self.tokenizer.pad_token_id, self._pad_multiple)
        out = self.model(input_ids=batch["input_ids"].to(self.device),
                                attention_mask=batch["attention_mask"].to(self.device), use_cache=False,
                                logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1].float()

    # ---- scoring ----

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        cands = np.asarray(candidates, dtype=np.int64)
        self._check_ready(cands.shape[1])

        def label_logits(rows: list[int], slots: list[np.ndarray]) -> torch.Tensor:
            lists = [cands[b][s] for b, s in zip(rows, slots, strict=True)]
            return self.answer_logits(self.prompts([histories[b] for b in rows], lists))[:, self._label_tokens]

        return score_in_batches(self.model, cands, int(self.hparams.get("score_batch_size", 16)), label_logits)

    # ---- training ----

    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """LoRA fine-tuning on lists as wide as the validation lists, drawn from ``examples`` each epoch."""
        width = int(val.candidates.shape[1])
        self._check_ready(width)
        label_tokens = self._label_tokens[:width]

        def make_batch(histories, lists, target_index) -> tuple:
            # Retrieval-mode lists of users with few unblocked items end in empty slots (id 0): no prompt line, and
            # their labels can never be the answer.
            filled = torch.as_tensor(lists != 0, device=self.device)
            prompts = self.prompts(histories, [row[row != 0] for row in lists])
            return prompts, torch.as_tensor(target_index, device=self.device), filled

        def loss(batch: tuple) -> torch.Tensor:  # cross-entropy over the candidates' label logits
            prompts, targets, filled = batch
            logits = self.answer_logits(prompts)[:, label_tokens]
            return F.cross_entropy(logits.masked_fill(~filled[:, : logits.shape[1]], -torch.inf), targets)

        return fit_on_lists(self, self.trainable, seqs, val, settings, callbacks, ks, examples, make_batch, loss)

    # ---- saving ----

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  items: pd.DataFrame, features: FeatureSet | None = None) -> QwenReranker:  # fmt: skip
        return cls(n_items, hparams, device, items=items)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder / ADAPTER_DIR), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
        with atomic_path(folder / ITEMS_FILE) as tmp:
            tmp.write_text(json.dumps({str(k): v for k, v in sorted(self.item_texts.items())}, ensure_ascii=False))
        meta = {"method": self.method, "n_items": self.n_items, "hparams": self.hparams}
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> QwenReranker:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG, f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", TOKENIZER_DIR, ITEMS_FILE):
            if not (folder / name).exists():
                raise MissingArtifactError(f"{folder / name} is missing; train the {cls.method} reranker first")
        meta = json.loads((folder / CONFIG).read_text())
        if meta["method"] != cls.method:
            raise MissingArtifactError(f"{folder} holds a {meta['method']!r} model, not {cls.method!r}")
        hparams, device = dict(meta["hparams"]), torch.device(device)
        if hparams.get("use_quantization") and device.type != "cuda":
            log.warning("%s was trained on a 4-bit base model; on %s the base model is loaded unquantized", folder,
                        device)  # fmt: skip
            hparams["use_quantization"] = False
        items = {int(k): v for k, v in json.loads((folder / ITEMS_FILE).read_text()).items()}
        instance = cls(meta["n_items"], hparams, device, items=items, tokenizer_dir=folder / TOKENIZER_DIR)
        state = load_file(str(folder / ADAPTER_DIR / ADAPTER_WEIGHTS), device="cpu")
        result = set_peft_model_state_dict(instance.model, state)
        if result.unexpected_keys:
            raise MissingArtifactError(f"{folder / ADAPTER_DIR} does not fit the base model {hparams['model']!r}: "
                                       f"unexpected weights {result.unexpected_keys[:3]}")  # fmt: skip
        instance.model.eval()
        return instance
