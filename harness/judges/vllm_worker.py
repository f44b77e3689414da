"""The vLLM side of the vllm judge backend: one process, one judge model, one engine, then exit.

Run as `python -m harness.judges.vllm_worker REQUEST.json RESULT.json`, like harness.generation.vllm_worker
(whose checks and engine start it reuses). The request holds token ids already rendered by the parent with
the judge's transformers tokenizer, so vLLM judges exactly the ids the hf backend would read. Each judge prompt
is generated greedily for `max_tokens` tokens, with the top `top_logprobs` log-probabilities of every
generated token (vLLM's raw log-probabilities: the model's log-softmax, as the hf backend computes it). The
result is `{"outputs": [{"token_ids": [...], "top_logprobs": [{"<token id>": logprob, ...}, ...]}, ...]}`, one
dict per generated token, in request order, or `{"error": "<one line>"}`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from harness.generation.vllm_worker import (
    check_checkpoint_folder,
    check_cpu_head_size,
    exit_now,
    serve_request,
    start_engine,
)

logger = logging.getLogger(__name__)

ENGINE_SEED = 0  # greedy decoding draws nothing; vLLM still wants a seed


def main(argv: list[str]) -> int:
    return serve_request(argv, lambda request, _: judge_request(request))


def judge_request(request: dict) -> dict:
    model = request["model"]
    local = Path(model).is_dir()
    if local:  # a Hub id is downloaded by vLLM itself; a local folder is checked first, in a second
        check_checkpoint_folder(Path(model))
    engine = request["engine"]
    if engine["in_process_engine"]:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vLLM is imported (see generation worker)
    if engine.get("cpu_threads"):
        os.environ["OMP_NUM_THREADS"] = str(engine["cpu_threads"])
    started = time.perf_counter()
    if local:
        check_cpu_head_size(Path(model))
    llm = start_engine(model, engine, ENGINE_SEED)
    engine_ready = time.perf_counter()

    from vllm import SamplingParams

    settings = SamplingParams(
        n=1,
        temperature=0.0,
        max_tokens=request["max_tokens"],
        logprobs=request["top_logprobs"],
        stop_token_ids=request["stop_token_ids"],
        detokenize=False,  # the parent decodes with the transformers tokenizer, as the generator does
    )
    outputs = []
    chunk_size = engine["prompts_per_call"]
    prompts = request["prompt_ids"]
    for start in range(0, len(prompts), chunk_size):
        chunk = [{"prompt_token_ids": ids} for ids in prompts[start : start + chunk_size]]
        for output in llm.generate(chunk, settings, use_tqdm=False):
            (completion,) = output.outputs
            # Every generated position's alternatives: the answer may come after markdown ("**B**").
            outputs.append(
                {
                    "token_ids": list(completion.token_ids),
                    "top_logprobs": [
                        {str(token): entry.logprob for token, entry in position.items()}
                        for position in completion.logprobs or []
                    ],
                }
            )
    return {
        "outputs": outputs,
        "timings": {"engine_start_s": engine_ready - started, "generate_s": time.perf_counter() - engine_ready},
    }


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
