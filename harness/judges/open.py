"""The model judge the evaluator asks: judge.kind model through judge.backend, or a trained judge (always hf)."""

from __future__ import annotations

import logging

from harness.judges.templates import load_template

logger = logging.getLogger(__name__)


def open_judge(judge_config, model_folder, device: str):
    """A judge with `compare(prompts, candidates, others, candidates_stopped, others_stopped)` and `close()`.

    `model_folder`: the judge model's folder or Hub id (kind model: judge.model; kind trained: the folder the
    judge stage wrote), or, for backend openai, the model name the endpoint serves. The gold judge is
    harness.judges.gold's and is not opened here."""

    if judge_config.kind not in ("model", "trained"):
        raise ValueError(f"open_judge opens model and trained judges, not judge.kind {judge_config.kind}")
    template = load_template(judge_config.template)
    backend = "hf" if judge_config.kind == "trained" else judge_config.backend
    if backend == "hf":
        from harness.judges.hf import HFJudge

        return HFJudge(str(model_folder), template, judge_config.batch_size, device)
    if backend == "vllm":
        from harness.judges.vllm import VLLMJudge

        return VLLMJudge(str(model_folder), template, judge_config.batch_size, judge_config.max_new_tokens, device)
    if backend == "openai":
        from harness.judges.openai import OpenAIJudge

        return OpenAIJudge(
            judge_config.base_url,
            str(model_folder),
            template,
            judge_config.batch_size,
            judge_config.max_new_tokens,
            judge_config.api_key_env,
        )
    raise ValueError(f"unknown judge.backend {backend}")
