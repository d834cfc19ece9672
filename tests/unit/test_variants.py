"""Named variants: which keys a variant may set, its merged and validated config, its paths."""

import copy

import pytest
import yaml

from context_research.config import REPO_ROOT, experiment_hash, load_config, validate_config
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.variants import (BASELINE, VariantError, compare_paths, other_variants, results_root,
                                       variant_config, variant_configs, variant_names)

DEFAULT = REPO_ROOT / "config" / "config.yaml"


def with_variants(variants: dict) -> dict:
    config = yaml.safe_load(DEFAULT.read_text())
    config["variants"] = variants
    return validate_config(config, experiments=EXPERIMENTS)


def test_the_default_is_the_baseline_alone_and_its_config_is_the_config():
    config = load_config(DEFAULT, experiments=EXPERIMENTS)
    assert config["variants"] == {} and config["compare"]["experiments"] == ["e0", "e1", "e2", "e5"]
    assert variant_names(config) == [BASELINE] and other_variants(config) == []
    base = variant_config(config, BASELINE, experiments=EXPERIMENTS)
    assert "variants" not in base and base == {k: v for k, v in config.items() if k != "variants"}
    assert results_root(BASELINE) == "results"


def test_an_overlay_merges_onto_serving_and_keeps_the_rest():
    config = with_variants({
        "fp8": {"serving": {"kv_cache_dtype": "fp8", "env": {"VLLM_ATTENTION_BACKEND": "FLEX_ATTENTION"}}},
        "chunked": {"serving": {"max_num_batched_tokens": 64, "enable_chunked_prefill": True, "block_size": 32,
                                "enable_prefix_caching": True, "extra_args": ["--max-num-seqs", "4"]}},
        "nixl": {"experiments": {"e3": {"connector": "NixlConnector"}}},
        "aa": None,
    })
    assert variant_names(config) == [BASELINE, "fp8", "chunked", "nixl", "aa"]
    fp8 = variant_config(config, "fp8", experiments=EXPERIMENTS)
    assert fp8["serving"]["kv_cache_dtype"] == "fp8"
    assert fp8["serving"]["env"]["VLLM_ATTENTION_BACKEND"] == "FLEX_ATTENTION"
    assert fp8["serving"]["gpu_memory_utilization"] == config["serving"]["gpu_memory_utilization"]
    assert fp8["experiments"] == config["experiments"] and "variants" not in fp8
    assert variant_config(config, "chunked", experiments=EXPERIMENTS)["serving"]["max_num_batched_tokens"] == 64
    assert variant_config(config, "nixl", experiments=EXPERIMENTS)["experiments"]["e3"]["connector"] == "NixlConnector"
    assert config["serving"].get("kv_cache_dtype") is None  # the base config is left alone
    assert results_root("fp8") == "results/variants/fp8"
    assert compare_paths("fp8")["html"] == "reports/compare/fp8/compare.html"


def test_each_variant_has_its_own_hash_and_an_empty_one_the_baselines():
    config = with_variants({"fp8": {"serving": {"kv_cache_dtype": "fp8"}}, "aa": {},
                            "nixl": {"experiments": {"e3": {"connector": "NixlConnector"}}}})
    configs = variant_configs(config, experiments=EXPERIMENTS)
    base = experiment_hash(configs[BASELINE], EXPERIMENTS["e1"])
    assert base == experiment_hash(config, EXPERIMENTS["e1"])  # the variants block is no hash input
    assert experiment_hash(configs["fp8"], EXPERIMENTS["e1"]) != base
    assert experiment_hash(configs["aa"], EXPERIMENTS["e1"]) == base  # an A/A pair: the same inputs
    assert experiment_hash(configs["nixl"], EXPERIMENTS["e1"]) == base  # E3's connector moves E3's hash only
    assert experiment_hash(configs["nixl"], EXPERIMENTS["e3"]) != experiment_hash(configs[BASELINE], EXPERIMENTS["e3"])


def test_a_variant_may_set_the_ucx_environment_of_e3s_nixl_engines_as_a_whole():
    ucx = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}
    config = with_variants({"zcopy": {"experiments": {"e3": {"connector": "NixlConnector", "ucx_env": ucx}}}})
    configs = variant_configs(config, experiments=EXPERIMENTS)
    assert configs["zcopy"]["experiments"]["e3"]["ucx_env"] == ucx
    assert experiment_hash(configs["zcopy"], EXPERIMENTS["e3"]) != experiment_hash(configs[BASELINE], EXPERIMENTS["e3"])
    assert experiment_hash(configs["zcopy"], EXPERIMENTS["e1"]) == experiment_hash(configs[BASELINE], EXPERIMENTS["e1"])


def test_a_model_profile_variant_serves_another_model():
    config = with_variants({"big": {"model_profile": "qwen3-8b"}})
    assert variant_config(config, "big", experiments=EXPERIMENTS)["model_profile"] == "qwen3-8b"


@pytest.mark.parametrize("overlay, key", [
    ({"experiments": {"e1": {"max_tokens": 3}}}, "experiments.e1.max_tokens"),
    ({"experiments": {"e3": {"ttft_slo_ms": 5}}}, "experiments.e3.ttft_slo_ms"),
    ({"serving": {"backend": "simulated"}}, "serving.backend"),
    ({"models": {"embedded": {"max_model_len": 4096}}}, "models.embedded.max_model_len"),
    ({"report": {"experiments": ["e0"]}}, "report.experiments"),
])
def test_a_key_a_variant_cannot_vary_is_an_error_naming_variant_and_key(overlay, key):
    config = with_variants({"mine": overlay})
    with pytest.raises(VariantError, match=rf"variant 'mine': config key '{key}' cannot differ between variants"):
        variant_config(config, "mine", experiments=EXPERIMENTS)


@pytest.mark.parametrize("overlay, key", [
    ({"serving": {"kv_cache_dtype": ""}}, "serving.kv_cache_dtype"),
    ({"serving": {"block_size": 0}}, "serving.block_size"),
    ({"serving": {"no_such_flag": 1}}, "serving.no_such_flag"),
    ({"experiments": {"e3": {"connector": "NoConnector"}}}, "experiments.e3.connector"),
])
def test_the_merged_config_is_validated_like_the_main_config(overlay, key):
    config = with_variants({"mine": overlay})
    with pytest.raises(VariantError, match=rf"variant 'mine': .*config key '{key}'"):
        variant_config(config, "mine", experiments=EXPERIMENTS)


def test_a_model_profile_that_is_not_configured_is_an_error():
    config = with_variants({"mine": {"model_profile": "nope"}})
    with pytest.raises(VariantError, match="variant 'mine': .*'nope' is not one of the entries of 'models'"):
        variant_config(config, "mine", experiments=EXPERIMENTS)


def test_an_unknown_variant_and_a_bad_name_are_errors():
    config = with_variants({"fp8": {"serving": {"kv_cache_dtype": "fp8"}}})
    with pytest.raises(VariantError, match="unknown variant 'fp9'; configured variants: baseline, fp8"):
        variant_config(config, "fp9", experiments=EXPERIMENTS)
    bad = yaml.safe_load(DEFAULT.read_text())
    bad["variants"] = {"a/b": {}}
    with pytest.raises(ConfigError, match="variants"):
        validate_config(copy.deepcopy(bad), experiments=EXPERIMENTS)


def test_a_variant_named_baseline_may_only_be_empty():
    assert variant_names(with_variants({"baseline": {}})) == [BASELINE]
    config = with_variants({"baseline": {"serving": {"kv_cache_dtype": "fp8"}}})
    with pytest.raises(VariantError, match="'baseline' is the config itself"):
        variant_configs(config, experiments=EXPERIMENTS)
