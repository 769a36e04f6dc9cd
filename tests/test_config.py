"""params.yaml, typed config, the original flat flags, and validation messages."""

from __future__ import annotations

import re
import warnings

import pytest
import yaml
from conftest import REPO

from recsys_core.config import FLAT_KEYS, build_config, default_params, load_config, prepared_dir_name
from recsys_core.errors import ConfigError
from stages.common import build_parser, config_from_args

# SPEC.md's hyperparameters and their defaults.
SPEC_DEFAULTS = {
    "retrieval_epochs": 100,
    "retrieval_lr": 1e-4,
    "batch_size_retrieval": 512,
    "retrieval_patience": 10,
    "rerank_epochs": 10,
    "rerank_lr": 1e-4,
    "rerank_batch_size": 16,
    "rerank_patience": 5,
    "rerank_eval_candidates": 50,
    "retrieval_top_k": 200,
    "rerank_top_k": 50,
    "qwen_max_candidates": 50,
    "qwen_max_history": 5,
    "qwen_max_seq_length": 2048,
    "semantic_summary_batch_size": 4,
    "use_quantization": False,
    "use_torch_compile": False,
    "qwen_mode": "text_only",
    "qwen_model": "qwen3-0.6b",
    "dataset_code": "ml-100k",
}


def parse(*argv: str):
    return config_from_args(build_parser("t", "t").parse_args(["--params", str(REPO / "params.yaml"), *argv]))


def test_params_yaml_holds_every_key_at_its_default():
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert on_disk == default_params()


def readme_restore_command() -> list[tuple[str, str]]:
    """The `-S section.key=value` pairs of the documented one command that brings the original defaults back."""
    text = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    section = text[text.index("### Changed defaults") :]
    command = next(line for line in section.splitlines() if line.startswith("dvc exp run "))
    return [tuple(pair.split("=", 1)) for pair in re.findall(r"-S (\S+=\S+)", command)]


def test_changed_defaults_are_few_and_the_readme_command_restores_every_original():
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    changed = {
        name for name, value in SPEC_DEFAULTS.items() if on_disk[FLAT_KEYS[name][0]][FLAT_KEYS[name][1]] != value
    }
    # the rerank_* values stay: they are shared with the LLM rerankers (LoRA wants lr 1e-4); the method is ltr
    assert changed == {"retrieval_epochs", "retrieval_lr", "batch_size_retrieval"}
    assert on_disk["rerank"]["rerank_method"] == "ltr"
    for dotted, value in readme_restore_command():
        section, key = dotted.split(".")
        assert key in on_disk[section], dotted
        on_disk[section][key] = yaml.safe_load(value)
    cfg = build_config(on_disk)
    for name, value in SPEC_DEFAULTS.items():
        section, key = FLAT_KEYS[name]
        assert getattr(getattr(cfg, section), key) == value, name
    assert cfg.rerank.rerank_method == "bert4rec"  # the original project's reranker, with its settings


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"min_ucc": 3}})
    text = str(err.value)
    assert "data.min_ucc" in text and "did you mean 'min_uc'" in text and "min_sc" in text


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match="unknown key 'retreival'"):
        build_config({"retreival": {}})


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"dataset_code": "beuty"})
    assert "data.dataset_code" in str(err.value) and "'beauty'" in str(err.value) and "'games'" in str(err.value)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"min_uc": 2}, "data.min_uc"),
        ({"retrieval_lr": 0}, "retrieval.retrieval_lr"),
        ({"rerank_top_k": 300}, "rerank_top_k (300) must be <= retrieval.retrieval_top_k (200)"),
        ({"dataset_code": "custom"}, "--custom_interactions"),
        ({"rerank_eval_candidates": "many"}, "candidates.rerank_eval_candidates"),
        ({"metric_ks": [0, -5, 10, 10]}, "cut-offs K must be positive integers; [0, -5]"),
        ({"metric_ks": [5, 10, 10, 20]}, "cut-offs K must be distinct; [10] appear"),
        ({"tie_order": "time"}, "data.tie_order"),
    ],
)
def test_bad_values_fail_with_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(REPO / "params.yaml", overrides)


def test_flat_flags_override_params_yaml():
    cfg = parse("--dataset_code", "beauty", "--min_rating", "3", "--min_uc", "20", "--min_sc", "20", "--seed", "7",
                "--rerank_eval_candidates", "20", "--use_text", "--use_image", "false")  # fmt: skip
    assert (cfg.data.dataset_code, cfg.data.min_rating, cfg.data.min_uc, cfg.data.min_sc) == ("beauty", 3, 20, 20)
    assert cfg.seed == 7 and cfg.candidates.rerank_eval_candidates == 20
    assert cfg.data.use_text is True and cfg.data.use_image is False
    assert prepared_dir_name(cfg.data) == "beauty_min_rating3-min_uc20-min_sc20"


def test_list_flags_take_several_values_and_list_choices_are_checked():
    cfg = parse("--ltr_features", "retriever", "history", "--ltr_models", "ease", "vbpr")
    assert cfg.ltr.ltr_features == ["retriever", "history"] and cfg.ltr.ltr_models == ["ease", "vbpr"]
    with pytest.raises(SystemExit):
        parse("--ltr_features", "retriever", "popularty")


def test_flags_not_given_keep_params_yaml(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["min_uc"] = 11
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = config_from_args(build_parser("t", "t").parse_args(["--params", str(path), "--min_sc", "9"]))
    assert (cfg.data.min_uc, cfg.data.min_sc) == (11, 9)


def test_every_config_key_is_a_flag():
    parser = build_parser("t", "t")
    options = {opt for action in parser._actions for opt in action.option_strings}
    assert {f"--{k}" for k in FLAT_KEYS} <= options


def test_qwen3vl_mode_is_a_deprecated_alias():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = parse("--qwen3vl_mode", "caption")
    assert cfg.llm.qwen_mode == "caption"
    assert any(issubclass(w.category, DeprecationWarning) and "--qwen_mode" in str(w.message) for w in caught)


def test_bad_flag_value_is_refused_by_the_parser():
    with pytest.raises(SystemExit):
        parse("--rerank_mode", "sideways")


def test_min_rating_keeps_its_written_form():
    assert prepared_dir_name(load_config(None, {"min_rating": 3.5}).data).startswith("ml-100k_min_rating3.5-")
    assert prepared_dir_name(parse("--min_rating", "4").data).startswith("ml-100k_min_rating4-")


def test_broken_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_config(path)


def test_a_named_params_file_must_exist(tmp_path, monkeypatch):
    missing = tmp_path / "typo-params.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"params file {missing} does not exist")):
        config_from_args(build_parser("t", "t").parse_args(["--params", str(missing)]))
    # Without --params, params.yaml of the working directory is read when present, the defaults otherwise.
    monkeypatch.chdir(tmp_path)
    assert config_from_args(build_parser("t", "t").parse_args([])).data.min_uc == 5
    (tmp_path / "params.yaml").write_text("data:\n  min_uc: 7\n")
    assert config_from_args(build_parser("t", "t").parse_args([])).data.min_uc == 7


def test_a_stage_given_a_missing_params_file_exits_1(tmp_path, caplog):
    from stages import cli

    assert cli.main(["promote", "retriever", "--params", str(tmp_path / "nope.yaml")]) == 1
    assert "does not exist" in caplog.text
