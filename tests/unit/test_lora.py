"""LoRA settings and merged saves (harness.algorithms.lora), on tiny models of the real suites' families."""

from __future__ import annotations

import types

import pytest
import torch

from harness.algorithms.lora import ADAPTER_FOLDER, inner_model, peft_config, save_policy
from harness.algorithms.onpolicy import AdapterDisabledReference
from harness.config import LoraConfig, ModelConfig, SuiteConfig, build
from harness.errors import ConfigError
from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_causal_lm, save_checkpoint

WORDS = ["a", "b", "c", "d", "e", "f"]


def suite_with(**lora) -> SuiteConfig:
    return SuiteConfig(name="lora-test", lora=LoraConfig(**lora))


def test_stages_without_adapters_get_no_peft_config():
    assert peft_config(suite_with(), "ppo") is None  # disabled by default
    assert peft_config(suite_with(enabled=True), "sft") is None  # sft is not among the default stages
    assert suite_with(enabled=True).lora.for_stage("sft") is None
    assert suite_with(enabled=False, stages=["sft"]).lora.for_stage("sft") is None


def test_peft_config_carries_the_suite_settings():
    config = peft_config(suite_with(enabled=True, r=4, alpha=8.0, stages=["dpo"]), "dpo")
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8.0, 0.0)
    assert config.target_modules == "all-linear"  # peft's keyword, not a module called "all-linear"
    named = peft_config(suite_with(enabled=True, target_modules=["q_proj", "v_proj"]), "grpo")
    assert set(named.target_modules) == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stages": ["rm"]}, "'lora.stages' names 'rm'"),
        ({"stages": ["ppoo"]}, "did you mean 'ppo'"),
        ({"r": 0}, "'lora.r' must be > 0"),
        ({"alpha": -1.0}, "'lora.alpha' must be > 0"),
        ({"dropout": 1.0}, "'lora.dropout' must be in [0, 1)"),
        ({"target_modules": []}, "'lora.target_modules' must name at least one"),
    ],
)
def test_bad_lora_settings_are_refused_with_one_line(values, message):
    with pytest.raises(ConfigError) as caught:
        build(SuiteConfig, {"lora": values}, "")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])
def adapted(request, tmp_path_factory):
    """A saved tiny base and a LoRA-wrapped copy whose adapters are non-zero (as after training)."""
    from peft import get_peft_model

    root = tmp_path_factory.mktemp(f"lora_{request.param}")
    tokenizer = build_word_tokenizer(WORDS, max_length=32)
    shape = ModelConfig(n_embd=32, n_layer=2, n_head=2, max_positions=32, architecture=request.param)
    save_checkpoint(build_tiny_causal_lm(shape, tokenizer, seed=0), tokenizer, root / "base")
    suite = suite_with(enabled=True, r=4, alpha=8.0)
    model = get_peft_model(load_causal_lm(root / "base"), peft_config(suite, "ppo"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)  # B starts at zero; a trained adapter's is not
    model.eval()
    inputs = tokenizer(["a b c d", "e f a"], return_tensors="pt", padding=True)
    return types.SimpleNamespace(root=root, model=model, inputs=dict(inputs), tokenizer=tokenizer)


def test_merged_checkpoint_computes_what_the_adapted_model_computes(adapted, tmp_path):
    with torch.no_grad():
        expected = adapted.model(**adapted.inputs).logits
    save_policy(adapted.model, adapted.root / "base", tmp_path / "policy")
    assert (tmp_path / "policy" / ADAPTER_FOLDER / "adapter_config.json").is_file()
    merged = load_causal_lm(tmp_path / "policy")  # a plain transformers model: no peft needed to load it
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert next(merged.parameters()).dtype == torch.float32
    with torch.no_grad():
        actual = merged(**adapted.inputs).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    base = load_causal_lm(adapted.root / "base")
    with torch.no_grad():
        assert (base(**adapted.inputs).logits - expected).abs().max() > 1e-3  # the adapter does matter


def test_adapter_disabled_reference_is_the_base_model(adapted):
    base = load_causal_lm(adapted.root / "base")
    reference = AdapterDisabledReference(adapted.model, adapted.model)
    with torch.no_grad():
        assert torch.equal(reference(**adapted.inputs).logits, base(**adapted.inputs).logits)
        # and the adapters are active again afterwards
        assert not torch.equal(adapted.model(**adapted.inputs).logits, base(**adapted.inputs).logits)
    assert inner_model(adapted.model) is adapted.model.get_base_model()
    assert inner_model(base) is base


def test_merge_keeps_updates_below_bf16_resolution(tmp_path):
    """A bf16 base merged in bf16 would round an adapter's small update away; the float32 merge keeps it."""
    from peft import get_peft_model

    tokenizer = build_word_tokenizer(WORDS, max_length=32)
    shape = ModelConfig(n_embd=32, n_layer=1, n_head=2, max_positions=32, architecture="qwen2")
    save_checkpoint(build_tiny_causal_lm(shape, tokenizer, seed=0).to(torch.bfloat16), tokenizer, tmp_path / "base")
    model = get_peft_model(
        load_causal_lm(tmp_path / "base"), peft_config(suite_with(enabled=True, r=2, alpha=2.0), "dpo")
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.fill_(1e-3)  # each weight moves by r * 1e-6 = 2e-6, under bf16's step near 0.02 (1e-4)
    save_policy(model, tmp_path / "base", tmp_path / "merged")
    from safetensors.torch import load_file

    merged, base = (
        load_file(str(tmp_path / "merged" / "model.safetensors")),
        load_file(str(tmp_path / "base" / "model.safetensors")),
    )
    name = next(key for key in base if key.endswith("self_attn.q_proj.weight"))
    delta = merged[name] - base[name].float()
    assert torch.allclose(delta, torch.full_like(delta, 2e-6), atol=1e-7)
    # What a bf16 merge would have kept: nothing, but for the few weights within about 5e-4 of zero.
    bf16_merge = (base[name] + torch.full_like(base[name], 2e-6)) - base[name]
    assert (bf16_merge != 0).float().mean() < 0.1
