"""Rewards: the trained reward model as a scorer, and the training reward online algorithms optimise.

The same `ProxyRewardModel` scores GRPO's (and PPO's) rollouts and every checkpoint in the evaluator, with
the text laid out exactly as TRL's RewardTrainer laid it out in training: prompt + completion + EOS, where
EOS is present only when the completion actually stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.modeling import auto_tokenizer, resolve_device

logger = logging.getLogger(__name__)


def as_completion(text: str) -> str:
    """Decoded completions lose their leading space; the task schema's completions start with one."""
    stripped = text.strip()
    return f" {stripped}" if stripped else ""


REWARD_METADATA = "harness_reward.json"  # beside a reward model: {"score_index": which logit is the reward}


class ProxyRewardModel:
    """A sequence classifier scoring (prompt, completion) text with its own tokenizer.

    Working on text, not token ids, is what makes a reward model with another vocabulary than the policy's
    correct: the policy's tokens are decoded and the classifier re-encodes them (a silent source of bugs when
    ids are passed across tokenizers)."""

    def __init__(
        self,
        folder: Path | str,
        device: str = "cpu",
        batch_size: int = 64,
        score_index: int | None = None,
        trust_remote_code: bool = False,
    ):
        import json

        from transformers import AutoModelForSequenceClassification

        self.device = resolve_device(device)
        self.tokenizer = auto_tokenizer(folder, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"reward model tokenizer in '{folder}' has no pad token: batches cannot be scored")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        if score_index is None:  # the harness's own reward models say which logit is the reward beside them
            metadata = Path(folder) / REWARD_METADATA
            score_index = json.loads(metadata.read_text())["score_index"] if metadata.is_file() else 0
        if score_index >= self.model.config.num_labels:
            raise ValueError(f"score_index={score_index} but '{folder}' has {self.model.config.num_labels} output(s)")
        self.score_index = score_index

    def score(self, prompts: list[str], completions: list[str], stopped: list[bool]) -> list[float]:
        import torch

        # EOS closes a completion that stopped, as in reward-model training; a classifier without an EOS token
        # (e.g. BERT-style) scores the bare text.
        eos = self.tokenizer.eos_token or ""
        texts = [
            prompt + as_completion(completion) + (eos if did_stop else "")
            for prompt, completion, did_stop in zip(prompts, completions, stopped, strict=True)
        ]
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.tokenizer.model_max_length,
                ).to(self.device)
                # The classifier reads the last non-pad token, so right padding is safe here.
                logits = self.model(**batch).logits[:, self.score_index]
                scores.extend(logits.float().cpu().tolist())
        return scores


def with_missing_stop_penalty(scores: list[float], stopped: list[bool], penalty: float) -> list[float]:
    """PPO.md §2.3: a completion without a stop token loses `penalty`, for every online algorithm alike (and for
    best-of-n's selection, which maximises the same training reward)."""
    return [value - (0.0 if did_stop else penalty) for value, did_stop in zip(scores, stopped, strict=True)]


def gold_reward_function(gold, task_module, device: str, batch_size: int):
    """What the evaluator calls gold, as callable(prompts, completions, stopped) -> scores: the task's own exact
    reward, or (gold.source reward_model) a held-out reward model loaded on the first call, so that a cell whose
    evaluations are complete loads nothing; None when there is no gold reward."""
    if gold.source == "task":
        if not task_module.HAS_GOLD_REWARD:
            return None
        return lambda prompts, completions, stopped: [
            task_module.gold_reward(p, c, s) for p, c, s in zip(prompts, completions, stopped, strict=True)
        ]
    scorers: list[ProxyRewardModel] = []

    def held_out_reward(prompts: list[str], completions: list[str], stopped: list[bool]) -> list[float]:
        if not scorers:
            scorers.append(
                ProxyRewardModel(gold.name_or_path, device, batch_size, gold.score_index, gold.trust_remote_code)
            )
        return scorers[0].score(prompts, completions, stopped)

    return held_out_reward


def training_reward_function(
    source: str, missing_stop_penalty: float, task_module, reward_model_dir: Path, device: str
):
    """The reward online algorithms optimise: the proxy RM minus the missing-stop penalty, or the gold reward.

    The reward model is loaded on the first call: offline algorithms (DPO) receive the function and never
    call it."""
    scorers: list[ProxyRewardModel] = []

    def reward(prompts: list[str], completions: list[str], stopped: list[bool]) -> list[float]:
        if source != "proxy":
            # The gold reward already charges a missing stop; adding the penalty again would count it twice.
            return [task_module.gold_reward(p, as_completion(c), s) for p, c, s in zip(prompts, completions, stopped)]
        if not scorers:
            scorers.append(ProxyRewardModel(reward_model_dir, device))
        return with_missing_stop_penalty(scorers[0].score(prompts, completions, stopped), stopped, missing_stop_penalty)

    return reward
