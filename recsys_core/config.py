"""Typed configuration: params.yaml sections, the original flat flag names, validation with clear messages.

params.yaml groups keys by concern (``data.min_uc``); the original scripts took flat flags (``--min_uc``).
Every key name is unique across sections, so a flat flag maps to exactly one ``section.key``.
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys_core.errors import ConfigError

log = logging.getLogger(__name__)

DATASETS = ("ml-100k", "ml-1m", "ml-latest-small", "beauty", "games", "custom")
# `custom-NAME`: a dataset of one's own kept under its own name (data/raw/custom-NAME/, experiment `custom-NAME`,
# registered models `custom-NAME-retriever`, ...), so several live side by side; `custom` is the unnamed one.
CUSTOM_NAMED = re.compile(r"custom-[a-z0-9][a-z0-9_]{0,39}")


def is_custom(code: str) -> bool:
    """Whether a dataset code is a dataset of one's own (``custom`` or ``custom-NAME``)."""
    return code == "custom" or CUSTOM_NAMED.fullmatch(code) is not None


RETRIEVAL_METHODS = ("lrurec", "mmgcn", "vbpr", "bm3", "ease")
RERANK_METHODS = ("qwen", "qwen3vl", "vip5", "bert4rec", "ltr")
QWEN_MODES = ("text_only", "raw_image", "caption", "semantic_summary", "semantic_summary_small")

# Deprecated flag -> the flag that replaces it.
DEPRECATED_FLAGS = {"qwen3vl_mode": "qwen_mode"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Section):
    """Which dataset, which filters. Defaults follow LlamaRec / LRURec (min_rating 0, 5-core)."""

    dataset_code: str = Field(
        "ml-100k", description=f"one of {', '.join(DATASETS)}, or custom-NAME for a named dataset of one's own"
    )
    min_rating: int | float = Field(0, ge=0, description="keep interactions with rating >= min_rating")
    min_uc: int = Field(5, ge=3, description="k-core: users keep >= min_uc interactions (>= 3 for train/val/test)")
    min_sc: int = Field(5, ge=1, description="k-core: items keep >= min_sc interactions")
    use_image: bool = False
    use_text: bool = False
    generate_caption: bool = False
    generate_semantic_summary: bool = False
    custom_interactions: str | None = Field(None, description="custom dataset: interactions csv/tsv/parquet")
    custom_items: str | None = Field(None, description="custom dataset: optional item metadata csv/tsv/parquet")
    max_bad_line_share: float = Field(0.01, ge=0, le=1, description="fail when more raw lines than this are bad")
    tie_order: Literal["file", "item_id", "shuffle"] = Field(
        "file", description="order of one user's interactions with equal timestamps: file order, item id, or seeded"
    )

    @field_validator("dataset_code")
    @classmethod
    def _known_dataset(cls, code: str) -> str:
        if code in DATASETS or is_custom(code):
            return code
        close = difflib.get_close_matches(code, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown dataset_code {code!r}{hint}: use one of {', '.join(map(repr, DATASETS))}, or custom-NAME "
            "(lower-case letters, digits and _, up to 40) to keep a dataset of one's own under its own name, e.g. "
            "custom-shoes"
        )


class CandidatesConfig(Section):
    """Ground-truth candidate lists: 1 true item + (N-1) negatives the user never touched."""

    rerank_eval_candidates: int = Field(50, ge=2)
    negative_sampling: Literal["uniform", "popularity"] = "uniform"


class FeaturesConfig(Section):
    """Item images (download + resize) and their embeddings."""

    image_size: int = Field(224, ge=16, description="images are resized to fit image_size x image_size (aspect kept)")
    image_workers: int = Field(8, ge=1, le=64, description="concurrent image downloads")
    image_timeout: float = Field(10.0, gt=0, description="seconds per image request (connect and read)")
    image_retries: int = Field(2, ge=0, description="retries after a timeout, a connection error, 429 or 5xx")
    image_max_mb: float = Field(20.0, gt=0, description="larger downloads are refused (status too_large)")
    clip_model: str = Field("ViT-B-32", description="open_clip architecture for image (and clip text) embeddings")
    clip_pretrained: str = Field("openai", description="open_clip pretrained tag, or a local checkpoint file")
    text_encoder: Literal["all-MiniLM-L6-v2", "clip"] = Field(
        "all-MiniLM-L6-v2", description="item text embeddings: sentence MiniLM (384-d, offline) or CLIP text"
    )
    embedding_batch_size: int = Field(64, ge=1)
    caption_model: str = Field("Salesforce/blip2-opt-2.7b", description="BLIP-2 id or local folder (captions stage)")
    caption_batch_size: int = Field(8, ge=1, description="images per BLIP-2 generate call")
    caption_max_new_tokens: int = Field(30, ge=1)
    summary_model: str = Field("Qwen/Qwen3-VL-2B-Instruct", description="Qwen3-VL id or local folder (summaries)")
    semantic_summary_batch_size: int = Field(4, ge=1, description="items per Qwen3-VL generate call")
    summary_max_new_tokens: int = Field(160, ge=8, description="new tokens for the full semantic summary")
    vl_min_pixels: int = Field(1024, ge=256, description="Qwen3-VL image resolution floor (pixels)")
    vl_max_pixels: int = Field(50176, ge=1024, description="Qwen3-VL image resolution cap (224x224 = 49 tokens)")


class RetrievalConfig(Section):
    retrieval_method: Literal["lrurec", "mmgcn", "vbpr", "bm3", "ease"] = "lrurec"
    # LRURec's published settings (originally 100 / 1e-4 / 512, which left LRURec at a third of its NDCG@10).
    retrieval_epochs: int = Field(500, ge=1, description="at most; early stopping ends sooner")
    retrieval_lr: float = Field(1e-3, gt=0)
    batch_size_retrieval: int = Field(128, ge=1)
    retrieval_patience: int = Field(10, ge=1)
    retrieval_top_k: int = Field(200, ge=1)
    retrieval_batch_order: Literal["random", "length"] = Field(
        "random", description="LRURec's batches: random (as published) or of similar length (faster, measured worse)"
    )


class VBPRConfig(Section):
    """VBPR (He & McAuley, AAAI 2016): β_i + γ_u·γ_i + θ_u·(E f_i) + β'·f_i, BPR loss, L2 regularisation."""

    vbpr_latent_dim: int = Field(32, ge=1, description="size of γ_u, γ_i")
    vbpr_visual_dim: int = Field(32, ge=1, description="size of θ_u and of the projection E f_i")
    vbpr_reg: float = Field(1e-4, ge=0, description="L2 weight on the batch's γ, θ, β_i")
    vbpr_feature: Literal["auto", "image", "text"] = Field(
        "auto", description="the content feature f_i: image (the paper), text, or auto = image when present, else text"
    )


class EASEConfig(Section):
    """EASE (Steck, WWW 2019): a closed-form item-item model, B = I - P diag(1/diag P), P = (X'X + lambda I)^-1."""

    ease_lambda: float = Field(200.0, gt=0, description="L2 weight lambda on B")
    ease_history_decay: float = Field(
        1.0, gt=0, le=1, description="weight of the item k steps before a history's last: decay^k (1 = all equal)"
    )


class MMGCNConfig(Section):
    """MMGCN (Wei et al., MM 2019): a GCN per modality with user preferences, id embeddings, BPR loss."""

    mmgcn_dim: int = Field(64, ge=1, description="size of the id embeddings and the modality latents")
    mmgcn_layers: int = Field(2, ge=1, le=3, description="graph layers per modality (the authors' code has 1-3)")
    mmgcn_aggr: Literal["mean", "add"] = "mean"
    mmgcn_concat: bool = Field(False, description="combination layer on [h, x_hat] (concat) or h + x_hat")
    mmgcn_reg: float = Field(1e-4, ge=0, description="L2 weight on the batch's id embeddings")


class BM3Config(Section):
    """BM3 (Zhou et al., WWW 2023): LightGCN + item-id residual, bootstrapped targets with dropout, no negatives."""

    bm3_dim: int = Field(64, ge=1)
    bm3_layers: int = Field(1, ge=1, le=4, description="LightGCN layers (published 1-2)")
    bm3_dropout: float = Field(0.5, ge=0, lt=1, description="dropout that makes the target views (0.3-0.5)")
    bm3_reg: float = Field(0.1, ge=0, description="weight of the embedding norm penalty (0.1 or 0.01)")
    bm3_cl_weight: float = Field(2.0, ge=0, description="weight of the modality alignment losses")


class TrainingConfig(Section):
    """The one training loop shared by every model."""

    monitor: str = Field("ndcg_at_10", description="validation metric for early stopping and the best weights")
    metric_ks: list[int] = Field([5, 10, 20], min_length=1, description="cut-offs K of Recall/NDCG/Hit")
    grad_clip: float = Field(5.0, ge=0, description="max gradient norm (0 = off)")
    mixed_precision: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = Field(256, ge=1)
    resume: bool = Field(True, description="continue from the checkpoint an interrupted run left (same config)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="optimizer step every this many batches")

    @field_validator("metric_ks")
    @classmethod
    def _distinct_positive(cls, value: list[int]) -> list[int]:
        bad = [k for k in value if k < 1]
        if bad:
            raise ValueError(f"cut-offs K must be positive integers; {bad} are not (e.g. [5, 10, 20])")
        repeated = sorted({k for k in value if value.count(k) > 1})
        if repeated:
            raise ValueError(f"cut-offs K must be distinct; {repeated} appear more than once")
        return value

    @field_validator("monitor")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value != "mrr" and not re.fullmatch(r"(recall|ndcg|hit)_at_\d+", value):
            raise ValueError("must be recall_at_K, ndcg_at_K, hit_at_K or mrr, e.g. ndcg_at_10")
        return value


class LRURecConfig(Section):
    """LRURec (WSDM 2024). Published settings: lr 1e-3, weight decay 0.01, batch 128, dropout 0.2."""

    lru_hidden_size: int = Field(64, ge=2)
    lru_num_blocks: int = Field(2, ge=1)
    lru_dropout: float = Field(0.2, ge=0, lt=1)
    lru_attn_dropout: float = Field(0.2, ge=0, lt=1)
    lru_max_len: int | None = Field(None, ge=2, description="input length; null = 200 for MovieLens, 50 otherwise")
    lru_sliding_window: float = Field(1.0, gt=0, le=1, description="window step as a share of max_len")
    lru_weight_decay: float = Field(0.01, ge=0)
    lru_r_min: float = Field(0.8, gt=0, lt=1)
    lru_r_max: float = Field(0.99, gt=0, lt=1)


LISTS_PER_USER_HELP = "list objectives: training lists per user and epoch (the most recent prefixes); null = all"


class BERT4RecConfig(Section):
    """BERT4Rec (Sun et al., CIKM 2019) as a reranker: hidden 64, 2 layers, 2 heads, mask probability 0.2."""

    bert_hidden_size: int = Field(64, ge=2)
    bert_num_blocks: int = Field(2, ge=1)
    bert_num_heads: int = Field(2, ge=1)
    bert_dropout: float = Field(0.2, ge=0, lt=1)
    bert_mask_prob: float = Field(0.2, gt=0, lt=1)
    bert_last_item_prob: float = Field(0.1, ge=0, le=1, description="share of windows that mask only the last item")
    bert_max_len: int | None = Field(None, ge=2, description="input length incl. [MASK]; null = 200 MovieLens, 50")
    bert_weight_decay: float = Field(0.01, ge=0)
    bert_objective: Literal["cloze", "list", "cloze_list"] = Field(
        "cloze", description="cloze (the paper), list (softmax over retrieved training lists) or both, summed"
    )
    bert_list_weight: float = Field(1.0, ge=0, description="weight of the list loss in cloze_list")
    bert_examples_per_user: int | None = Field(1, ge=1, description=LISTS_PER_USER_HELP)
    # random since 2026-12-01 (length before): over 3 seeds on ML-100K, NDCG@20 alone +0.0124 [+0.0044, +0.0205]
    bert_batch_order: Literal["random", "length"] = Field(
        "random", description="cloze batches: random (as published) or of similar length (faster, measured worse)"
    )


class RerankConfig(Section):
    # ltr: the one reranker measured not to lose to LRURec on ML-100K (README: changed defaults); was bert4rec
    rerank_method: Literal["qwen", "qwen3vl", "vip5", "bert4rec", "ltr"] = "ltr"
    rerank_mode: Literal["ground_truth", "retrieval"] = "retrieval"
    rerank_epochs: int = Field(10, ge=1)
    rerank_lr: float = Field(1e-4, gt=0)
    rerank_batch_size: int = Field(16, ge=1)
    rerank_patience: int = Field(5, ge=1)
    rerank_top_k: int = Field(50, ge=1)
    rerank_score_fusion: bool = Field(
        True, description="retrieval mode: add the retriever's standardised score, weight tuned on validation"
    )


LTR_FEATURES = ("retriever", "models", "popularity", "transitions", "content", "history")


SHIFTS_HELP = (
    "more training lists: the validation lists of the split moved 1..N steps earlier, each from a shadow "
    "retriever (the champion's method, `retrieval` settings) trained on that split"
)


class LTRConfig(Section):
    """The learning-to-rank reranker (LightGBM lambdarank) over every signal the platform computes."""

    ltr_features: list[Literal["retriever", "models", "popularity", "transitions", "content", "history"]] = Field(
        list(LTR_FEATURES), min_length=1, description="feature families the ranker sees"
    )
    ltr_models: list[str] = Field(
        ["ease"],
        description="other registered models of this data whose scores are features: retriever or reranker methods "
        "(retrievers are trained and registered by the train_ltr_models stage)",
    )
    ltr_num_leaves: int = Field(31, ge=2)
    ltr_learning_rate: float = Field(0.05, gt=0)
    ltr_num_rounds: int = Field(500, ge=1, description="boosting rounds at most (early stopping on validation)")
    ltr_early_stopping: int = Field(50, ge=1, description="rounds without a validation gain before stopping")
    ltr_min_data_in_leaf: int = Field(20, ge=1)
    ltr_folds: int = Field(5, ge=2, description="cross-fitting folds of the validation users")
    ltr_recent_share: float = Field(0.1, gt=0, le=1, description="recent popularity: the newest share of interactions")
    ltr_transition_window: int = Field(3, ge=1, description="last history items whose transitions are counted")
    ltr_start_from_retriever: bool = Field(
        True, description="boosting starts from the retriever's z-scored score (init_score): trees learn corrections"
    )
    ltr_shifts: int = Field(0, ge=0, description=SHIFTS_HELP)


class LLMConfig(Section):
    """Qwen / Qwen3-VL reranker settings. "qwen3-1.6b" maps to Qwen/Qwen3-1.7B (no 1.6B was published)."""

    qwen_mode: Literal["text_only", "raw_image", "caption", "semantic_summary", "semantic_summary_small"] = "text_only"
    qwen_model: str = "qwen3-0.6b"
    qwen_max_candidates: int | None = Field(50, ge=2)
    qwen_max_history: int = Field(5, ge=1)
    qwen_max_seq_length: int = Field(2048, ge=128)
    use_quantization: bool = False
    use_torch_compile: bool = False
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="module names that get LoRA adapters"
    )
    qwen3vl_model: str = Field("Qwen/Qwen3-VL-2B-Instruct", description="the qwen3vl reranker's model id or folder")
    qwen3vl_missing_image: Literal["placeholder", "error"] = Field(
        "placeholder", description="raw_image mode, item without an image: a '(no image)' text, or stop"
    )


class VIP5Config(Section):
    """VIP5 (Geng et al., 2023) reranker: a frozen T5 with adapters, CLIP features as visual tokens after item ids."""

    vip5_model: str = Field("t5-small", description="T5 id or local folder (`recsys tiny-model --arch t5` makes one)")
    vip5_feature: Literal["image", "text"] = Field(
        "image", description="embeddings behind the visual tokens: item images (CLIP), or text for image-less data"
    )
    image_feature_size_ratio: int = Field(2, ge=1, description="visual tokens after each item id (published 2)")
    vip5_reduction_factor: int = Field(8, ge=1, description="adapter bottleneck = d_model / reduction_factor")
    vip5_unfreeze_layer_norms: bool = Field(False, description="also train the backbone's layer norms")
    vip5_max_history: int = Field(10, ge=1, description="most recent history items in the prompt")
    vip5_max_length: int = Field(512, ge=32, description="prompt tokens; history is shortened, candidates never")


class ServingConfig(Section):
    """Limits of the served models, stored with the two-stage model when it is logged. A request over one is refused
    before any work (HTTP 400 naming the limit; 413 for the body), so one request cannot sink the server."""

    serving_max_rows: int = Field(100, ge=1, description="rows (one recommendation list each) per request")
    serving_max_history: int = Field(5000, ge=1, description="item ids in one row's history")
    serving_max_candidates: int = Field(500, ge=1, description="the reranker model: candidate ids in one row")
    serving_max_body_mb: float = Field(8.0, gt=0, description="request body size (make serve; 413 above it)")
    serving_max_concurrent: int = Field(
        2, ge=1, description="requests parsed and scored at once (make serve); the others wait their turn"
    )


METHOD_SECTION = {"qwen": "llm", "qwen3vl": "llm"}  # the methods whose settings live under another name


def method_section(method: str) -> str:
    """The params.yaml section that holds a method's own settings."""
    return METHOD_SECTION.get(method, method)


class Config(BaseModel):
    """The whole params.yaml."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(42, ge=0)
    data: DataConfig = DataConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    features: FeaturesConfig = FeaturesConfig()
    training: TrainingConfig = TrainingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    lrurec: LRURecConfig = LRURecConfig()
    vbpr: VBPRConfig = VBPRConfig()
    mmgcn: MMGCNConfig = MMGCNConfig()
    bm3: BM3Config = BM3Config()
    ease: EASEConfig = EASEConfig()
    rerank: RerankConfig = RerankConfig()
    bert4rec: BERT4RecConfig = BERT4RecConfig()
    ltr: LTRConfig = LTRConfig()
    llm: LLMConfig = LLMConfig()
    vip5: VIP5Config = VIP5Config()
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if (
            self.training.monitor != "mrr"
            and int(self.training.monitor.rsplit("_", 1)[1]) not in self.training.metric_ks
        ):
            raise ValueError(
                f"training.monitor {self.training.monitor!r} needs its K in training.metric_ks {self.training.metric_ks}"
            )
        if self.bert4rec.bert_hidden_size % self.bert4rec.bert_num_heads:
            raise ValueError(
                f"bert4rec.bert_hidden_size ({self.bert4rec.bert_hidden_size}) must be divisible by "
                f"bert4rec.bert_num_heads ({self.bert4rec.bert_num_heads})"
            )
        if self.lrurec.lru_r_min >= self.lrurec.lru_r_max:
            raise ValueError("lrurec.lru_r_min must be below lrurec.lru_r_max (ring initialisation radii)")
        if self.rerank.rerank_top_k > self.retrieval.retrieval_top_k:
            raise ValueError(
                f"rerank.rerank_top_k ({self.rerank.rerank_top_k}) must be <= retrieval.retrieval_top_k "
                f"({self.retrieval.retrieval_top_k}): the reranker can only reorder what was retrieved"
            )
        if is_custom(self.data.dataset_code) and not self.data.custom_interactions:
            raise ValueError(
                f"data.dataset_code is {self.data.dataset_code!r} but data.custom_interactions is empty: "
                "give the interactions file with --custom_interactions PATH"
            )
        return self


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}


def _flat_keys() -> dict[str, tuple[str | None, str]]:
    """Flat flag name -> (section or None for top level, key)."""
    flat: dict[str, tuple[str | None, str]] = {"seed": (None, "seed")}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            if key in flat:
                raise RuntimeError(f"config key {key!r} is defined twice; flat flags need unique names")
            flat[key] = (section, key)
    return flat


FLAT_KEYS = _flat_keys()


def field_info(flat_key: str):
    """The pydantic FieldInfo behind a flat flag name (for building argparse options)."""
    section, key = FLAT_KEYS[flat_key]
    model = Config if section is None else SECTIONS[section]
    return model.model_fields[key]


def allowed_values(annotation: Any) -> tuple[Any, ...] | None:
    """The choices of a Literal annotation, else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        where = ".".join(loc) if loc else "(top level)"
        if item["type"] == "extra_forbidden":
            parent = loc[0] if len(loc) > 1 else None
            model = SECTIONS.get(parent) if parent else Config
            allowed = list(model.model_fields) if model else []
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"  - unknown key '{where}'{extra} Allowed keys here: {', '.join(allowed)}")
        elif not loc:  # a cross-field check: its message names the keys
            lines.append(f"  - {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - '{where}' = {item.get('input')!r}: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def build_config(raw: dict[str, Any], origin: str = "params.yaml") -> Config:
    """Validate a nested dict (the shape of params.yaml) into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def read_params(path: Path, must_exist: bool = False) -> dict[str, Any]:
    """params.yaml as a nested dict ({} when the default file is absent; a file the user named must exist)."""
    if not path.exists():
        if must_exist:
            raise ConfigError(
                f"params file {path} does not exist; give an existing file with --params, or drop the flag"
            )
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix the syntax or restore it from git") from None
    return loaded or {}


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Put flat flag values (``{"min_uc": 10}``) into their sections; unknown names fail with a hint."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, value in overrides.items():
        if name in DEPRECATED_FLAGS:
            new = DEPRECATED_FLAGS[name]
            msg = f"--{name} is deprecated; use --{new} (same values)"
            warnings.warn(msg, DeprecationWarning, stacklevel=2)
            log.warning(msg)
            name = new
        if name not in FLAT_KEYS:
            hint = difflib.get_close_matches(name, list(FLAT_KEYS), n=1)
            extra = f"; did you mean --{hint[0]}?" if hint else ""
            raise ConfigError(f"unknown flag --{name}{extra}")
        section, key = FLAT_KEYS[name]
        if section is None:
            merged[key] = value
        else:
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"params.yaml: section '{section}' must be a mapping, got {target!r}")
            target[key] = value
    return merged


def load_config(
    params_path: Path | None = None, overrides: dict[str, Any] | None = None, must_exist: bool = False
) -> Config:
    """params.yaml (if given and present; ``must_exist`` when the user named it) + flat overrides -> a Config."""
    raw = read_params(params_path, must_exist) if params_path else {}
    origin = str(params_path) if params_path else "defaults"
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " + command-line flags"
    return build_config(raw, origin)


def default_params() -> dict[str, Any]:
    """Every key at its default, in params.yaml's shape."""
    return Config().model_dump(mode="json")


def prepared_dir_name(data: DataConfig) -> str:
    """`{code}_min_rating{r}-min_uc{u}-min_sc{s}`, the folder name users of the original project know."""
    # str() of the value as written (3 stays "3", 3.0 stays "3.0"), exactly as dvc.yaml's ${data.min_rating} renders it.
    return f"{data.dataset_code}_min_rating{data.min_rating}-min_uc{data.min_uc}-min_sc{data.min_sc}"
