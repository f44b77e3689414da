"""Tokenizers and models: build the tiny word-level ones the embedded task needs, load any HF folder.

Every checkpoint the harness writes is a standard Hugging Face folder (safetensors weights, config,
tokenizer) that `AutoModelForCausalLM`, `AutoModelForSequenceClassification` and vLLM load.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"


CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
CHATML_ROLES = ["system", "user", "assistant"]
# ChatML as Qwen2.5-Instruct lays it out (without its default system message): the stand-in for an instruct
# model's template. Written here from the format's description, for built tokenizers only.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_word_tokenizer(words: list[str], max_length: int, chatml: bool = False):
    """A whitespace word-level tokenizer over `words`, with pad != eos (PPO.md §6.3).

    EOS is an *added special token*, so TRL's trainers that append the EOS string straight after the text
    ("... .</s>") still split it off before the whitespace pre-tokenizer runs. With `chatml`, the tokenizer
    also has ChatML's turn markers and template, and the end-of-turn marker is its EOS, as in an instruct model.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = CHATML_END if chatml else EOS_TOKEN
    specials = [PAD_TOKEN, eos, UNK_TOKEN] + ([CHATML_START] if chatml else [])
    if chatml:
        words = words + [role for role in CHATML_ROLES if role not in words]
    vocab = {token: index for index, token in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token=eos,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    if chatml:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(model_config, tokenizer, seed: int):
    """A small causal LM of the family `model_config.architecture`, sized by `model_config`, dropout off
    everywhere (PPO.md §2.1). The families are the real suites' (GPT-2, Pythia's GPT-NeoX, Qwen2, Llama), so a
    stand-in exercises the real module classes: their attention, rotary positions and LoRA target names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    tokens = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    width, depth, heads = model_config.n_embd, model_config.n_layer, model_config.n_head
    architecture = model_config.architecture
    if architecture == "gpt2":
        shape = dict(
            n_positions=model_config.max_positions,
            n_embd=width,
            n_layer=depth,
            n_head=heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
        )
    else:
        shape = dict(
            max_position_embeddings=model_config.max_positions,
            hidden_size=width,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            attention_dropout=0.0,
        )
        if architecture == "gpt_neox":  # Pythia: partial rotary, parallel residual, untied output head
            shape.update(rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.0, tie_word_embeddings=False)
        else:  # qwen2 / llama: grouped-query attention in the real ones; one KV head per query head here
            shape.update(num_key_value_heads=heads, tie_word_embeddings=architecture == "qwen2")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(architecture, **tokens, **shape))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_pretrained_base(model_config):
    """A base model and tokenizer from a local folder or the Hub, with a pad token distinct from EOS.

    Many causal LMs ship without a pad token; setting pad = eos would mask the EOS out of every loss and make
    "stopped" undetectable (PPO.md §6.3), so a new [PAD] token is added and the embeddings resized.
    """
    from transformers import AutoModelForCausalLM

    source = model_config.name_or_path
    tokenizer = auto_tokenizer(source, trust_remote_code=model_config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, use_safetensors=True, trust_remote_code=model_config.trust_remote_code
    )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of '{source}' has no EOS token: completions could never stop")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    _disable_dropout(model)
    return model, tokenizer


def _disable_dropout(model) -> None:
    """Dropout off everywhere (PPO.md §2.1): every algorithm then trains the same deterministic network."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout", "hidden_dropout"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)


def context_length(model_config_folder: Path) -> int | None:
    """The longest sequence the model's positions allow, read from its config (None when unbounded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_config_folder)
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    """Write model (safetensors) and tokenizer into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(folder: Path | str, device: str = "cpu", trust_remote_code: bool = False):
    """Load a causal LM in eval mode; safetensors only, never a pickle (`use_safetensors=True`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


# Tokenizer classes that only wrap a tokenizer.json: the file alone defines the tokenization.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def auto_tokenizer(source: Path | str, trust_remote_code: bool = False):
    """AutoTokenizer, except that a local folder whose tokenizer_config.json names a generic tokenizer.json class
    loads as exactly that. transformers 5 otherwise takes the class it registers for the model type in
    config.json (Qwen2Tokenizer for qwen2) and rebuilds the tokenizer with that class's own pre-tokenizer: a
    word-level stand-in tokenizer saved beside a Qwen2 model reloaded as two unknown tokens for "the cat sat"."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = Path(source) / "tokenizer_config.json"
    if (
        config_file.is_file()
        and json.loads(config_file.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES
    ):
        return PreTrainedTokenizerFast.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_tokenizer(folder: Path | str, trust_remote_code: bool = False):
    tokenizer = auto_tokenizer(folder, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"tokenizer in '{folder}' must have a pad token different from EOS (PPO.md §6.3)")
    return tokenizer
