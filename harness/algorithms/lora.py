"""LoRA (Hu et al. 2021, arXiv:2106.09685) through peft: the adapter settings of a stage, and merged saves.

Every checkpoint the harness hands on (to the evaluator, vLLM, the next stage) stays a standard Hugging Face
folder, so a policy trained with adapters is saved merged: W + (alpha / r) * B A in full weights. The adapter
itself is kept beside the merged weights in ``adapter/`` for whoever wants it.

The merge happens in float32 on the CPU, on a fresh copy of the base weights read from disk: a bf16 merge
would round away updates below bf16's resolution of the base weights (about 0.4% of each weight), which at
RLHF learning rates is most of them, and the copy costs no accelerator memory while training goes on.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_FOLDER = "adapter"


def peft_config(suite, stage: str):
    """A peft LoraConfig when the suite trains `stage` (sft, dpo, grpo, ppo) with adapters, else None."""
    settings = suite.lora.for_stage(stage)
    if settings is None:
        return None
    import warnings

    from peft import LoraConfig

    # GPT-2 keeps its linear layers as Conv1D (weights transposed); peft notices, sets fan_in_fan_out itself and
    # warns on every wrap, which would only clutter the console.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
    targets = settings["target_modules"]
    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        # peft's "all-linear" is a string of its own, not a module name inside a list
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def is_adapted(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def inner_model(model):
    """The transformers model under a PeftModel (adapters stay active inside it), or the model itself:
    what `generate` and `generation_config` belong to."""
    return model.get_base_model() if is_adapted(model) else model


def save_policy(model, base_dir: Path, folder: Path, state_dict=None) -> Path:
    """Save a trained policy as a standard HF folder (weights only; tokenizers are saved by the caller).

    `state_dict`: the model's full weights when they were gathered from ranks that shard them (DeepSpeed
    ZeRO-3, FSDP; `trl_support.gathered_state_dict`); None saves the weights the model holds."""
    folder = Path(folder)
    if not is_adapted(model):
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
        return folder
    adapter_dir = folder / ADAPTER_FOLDER
    # peft keeps only the adapter's tensors of a full state dict
    model.save_pretrained(adapter_dir, safe_serialization=True, state_dict=state_dict)
    merged = merged_model(base_dir, adapter_dir)
    merged.generation_config = inner_model(model).generation_config
    merged.save_pretrained(folder, safe_serialization=True)
    return folder


def merged_model(base_dir: Path, adapter_dir: Path):
    """The base model in float32 with the adapter in `adapter_dir` merged into its weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
