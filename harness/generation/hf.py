"""transformers `generate()` backend: batched, left-padded, pure sampling from a complete GenerationConfig.

A complete GenerationConfig is passed so that nothing in the checkpoint's generation_config.json (for
example transformers' top_k=50 default, transformers#38549) changes what is sampled (PPO.md §2.2).

Seeding, with the same semantics as the vLLM backend (harness.generation.vllm): the samples of one call
are independent draws from the policy, across prompts and across the `n` samples of a prompt, and the same
seed gives the same samples again. Each batch of prompts seeds torch's global generator once, with
`seed * 1_000_003 + batch number`, and `generate()` then draws every token of every row from that one
stream. Unlike vLLM's per-sample seeds, a sample here also depends on `batch_size` and the device (both are
in the recorded config), not only on (seed, prompt, sample).
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.generation.base import Generation, SamplingSettings
from harness.modeling import load_causal_lm, load_tokenizer, resolve_device

logger = logging.getLogger(__name__)


class HFGenerator:
    name = "hf"

    def __init__(self, device: str = "cpu", batch_size: int = 64, progress=None):
        self.device = device
        self.batch_size = batch_size
        self.progress = progress  # optional callable(advance: int) for a progress bar

    def generate(self, checkpoint: Path, prompts: list[str], n: int, sampling: SamplingSettings, seed: int):
        import torch
        from transformers import GenerationConfig

        device = resolve_device(self.device)
        tokenizer = load_tokenizer(checkpoint)
        tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
        model = load_causal_lm(checkpoint, device)
        eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        config = GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            repetition_penalty=1.0,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        results: list[Generation] = []
        for batch_number, start in enumerate(range(0, len(prompts), self.batch_size)):
            batch_prompts = prompts[start : start + self.batch_size]
            encoded = tokenizer(batch_prompts, return_tensors="pt", padding=True).to(device)
            # One seed per batch: the samples depend on the seed and the prompts, not on earlier batches.
            torch.manual_seed(seed * 1_000_003 + batch_number)
            with torch.inference_mode():
                output = model.generate(**encoded, generation_config=config)
            completions = output[:, encoded["input_ids"].shape[1] :].cpu()
            for row, ids in enumerate(completions.tolist()):
                prompt_offset = row // n
                prompt_index = start + prompt_offset
                prompt_ids = [
                    token
                    for token, keep in zip(
                        encoded["input_ids"][prompt_offset].tolist(), encoded["attention_mask"][prompt_offset].tolist()
                    )
                    if keep
                ]
                completion_ids, stopped = truncate_after_eos(ids, eos_id)
                results.append(
                    Generation(
                        prompt_index=prompt_index,
                        sample_index=row % n,
                        prompt_ids=prompt_ids,
                        completion_ids=completion_ids,
                        text=tokenizer.decode(completion_ids, skip_special_tokens=True),
                        stopped=stopped,
                    )
                )
            if self.progress:
                self.progress(len(batch_prompts))
        return results


def truncate_after_eos(ids: list[int], eos_id: int) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS; everything after it is padding (PPO.md §2.2 step 4)."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1], True
    return ids, False


def create(device: str, batch_size: int, progress=None) -> HFGenerator:
    """Registry entry point (see harness.registry.GENERATORS)."""
    return HFGenerator(device, batch_size, progress)
