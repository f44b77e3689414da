"""What an algorithm declares, once, and how a registry name becomes an algorithm.

Every algorithm module holds a `Config` dataclass (the only home of its defaults, each field's help in the
comment lines under it), a `train(context)` entry point and one `SPEC`: the facts the config, the plan, the
stages and the cell's tags read. A variant (Dr. GRPO, DAPO, GSPO of GRPO; IPO of DPO) is a `Preset` in its
base's module: other defaults for the same Config, so it runs the same trainer with every capability of its
base (vLLM rollouts, LoRA, snapshots, resume) and no code of its own. Its registry line names it
"module:PRESET".

Importing this module, or resolving a name, imports the algorithm's module only: no torch, transformers or trl.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from harness.errors import UserError
from harness.registry import ALGORITHMS, did_you_mean


@dataclass(frozen=True)
class AlgorithmSpec:
    family: str  # one of harness.record.FAMILIES: the report groups algorithms by it
    # The Config field that sets how far the policy may move from the reference: a frontier sweeps it, the
    # report's matched-KL table names it; kl_knob_raises_kl says whether a larger value allows more KL.
    kl_knob: str
    kl_knob_raises_kl: bool
    # The validated Config -> one sentence for the report: what the algorithm learned from.
    describe_data: Callable[[Any], str]
    # train/ metric names (without the prefix) the report draws for it, besides the shared record.TRAIN_* ones.
    curves: tuple[str, ...] = ()
    # Logged statistics whose NaN/inf means divergence (the TRL-backed ones pass them to
    # trl_support.DivergenceGuard; PPO and REINFORCE++ check every statistic they log).
    watched: tuple[str, ...] = ()
    # False for inference-time methods: no weights change, `lora.stages` may not name it, and the evaluator
    # keeps the best of its Config's `n` draws per answer.
    trains_policy: bool = True


@dataclass(frozen=True)
class Preset:
    """A variant: its base module's Config with other defaults and, where it logs more, other curves."""

    values: dict[str, Any]  # Config field -> the variant's default; a suite's own values still override them
    about: str  # the variant's paper and how this preset departs from it (what `harness list algorithms` shows)
    curves: tuple[str, ...] | None = None  # None: the base's


class PresetError(UserError, ValueError):
    """A preset that sets a key its base's Config does not have: refused when the name is first resolved."""


@dataclass(frozen=True)
class Algorithm:
    """A registry name resolved: the module that trains it, what it declares, and its defaults."""

    name: str
    module: ModuleType
    spec: AlgorithmSpec
    defaults: dict[str, Any]  # the preset's values over the Config's own defaults ({} for a base algorithm)
    about: str  # the module's docstring, or the preset's text

    @property
    def config_class(self) -> type:
        return self.module.Config

    def train(self, context):
        return self.module.train(context)


@functools.lru_cache(maxsize=None)
def algorithm(name: str) -> Algorithm:
    """The registered algorithm `name` (registry.UnknownNameError, with the closest names, when none is)."""

    entry = ALGORITHMS.entry(name)
    module_name, _, preset_name = entry.target.partition(":")
    module = importlib.import_module(module_name)
    if not preset_name:
        return Algorithm(name, module, module.SPEC, {}, (module.__doc__ or "").strip())
    preset: Preset = getattr(module, preset_name)
    fields = [field.name for field in dataclasses.fields(module.Config)]
    for key in preset.values:
        if key not in fields:
            raise PresetError(
                f"{module.__file__}: preset {preset_name} of '{name}' sets '{key}', which is not an "
                f"option of {module_name}.Config;{did_you_mean(key, fields)}".rstrip(";")
            )
    spec = module.SPEC if preset.curves is None else dataclasses.replace(module.SPEC, curves=preset.curves)
    return Algorithm(name, module, spec, dict(preset.values), preset.about.strip())
