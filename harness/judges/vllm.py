"""judge.backend vllm: every judge prompt of one `compare` call in one vLLM run, in a process of its own.

The engine settings (HARNESS_VLLM_* environment variables), the watched worker process and its one-line
errors are the vLLM generator's (harness/generation/vllm.py); the worker is harness.judges.vllm_worker. The
parent renders and tokenizes the prompts with the judge's transformers tokenizer, as the hf backend does, so
both backends judge the same token ids. Each prompt is answered greedily with every generated token's top
log-probabilities; the verdict is the two labels' renormalised probabilities at the reply's answer token (the
first label token where the reply so far parses as that label: the "B" of "**B**", not the "**" before it)
when both are among its alternatives, else the generated text, parsed (unparseable when it names neither
label; harness.judges.pairwise.reply_verdict).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from harness.generation.hf import truncate_after_eos
from harness.generation.vllm import VLLMGenerator, _memory_hint, run_worker
from harness.judges.base import OrderVerdict
from harness.judges.pairwise import JudgeError, PairwiseJudge, answer_token_ids, reply_verdict
from harness.judges.templates import JudgeTemplate, prompt_token_ids
from harness.modeling import auto_tokenizer

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # vLLM's default ceiling (max_logprobs), and the most OpenAI's API returns
WORKER_MODULE = "harness.judges.vllm_worker"


class VLLMJudge(PairwiseJudge):
    def __init__(self, model: str, template: JudgeTemplate, batch_size: int, max_new_tokens: int, device: str):

        self.model, self.template, self.max_new_tokens = str(model), template, max_new_tokens
        self.tokenizer = auto_tokenizer(self.model)
        # Labels the tokenizer cannot tell apart are refused here, as the hf backend refuses them.
        answer_token_ids(self.tokenizer, template.answers, f"judge model '{self.model}'")
        self.engine = VLLMGenerator(device, batch_size)  # its settings and its worker watch, not its generate()
        self.last_timings: dict[str, float] = {}

    def judge_orders(self, orders: list[tuple[str, str, str]]) -> list[OrderVerdict]:
        prompt_ids = [prompt_token_ids(self.tokenizer, self.template.messages(*order)) for order in orders]
        local = Path(self.model).is_dir()
        engine = self.engine._engine_settings(Path(self.model))  # a local folder's dtype is its config's
        if not local and not self.engine.dtype:
            engine["dtype"] = "auto"  # a Hub model in its published dtype
        request = {
            "model": str(Path(self.model).resolve()) if local else self.model,
            "prompt_ids": prompt_ids,
            "max_tokens": self.max_new_tokens,
            "top_logprobs": TOP_LOGPROBS,
            "stop_token_ids": [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [],
            "engine": engine,
        }
        with tempfile.TemporaryDirectory(prefix="harness-vllm-judge-") as folder:
            result = self._run_worker(request, Path(folder))
        self.last_timings = result.get("timings", {})
        return [self._verdict(output) for output in result["outputs"]]

    def _verdict(self, output: dict) -> OrderVerdict:
        """The labels' probabilities at the reply's answer token when both are among its top log-probabilities,
        else the parsed text (harness.judges.pairwise.reply_verdict). Every token, generated or an alternative,
        is read as the text the tokenizer decodes it to, as the openai backend reads an API's tokens."""

        token_ids, _ = truncate_after_eos(output["token_ids"], self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
        tokens = [self._token_text(token) for token in token_ids]
        alternatives = [
            [(self._token_text(int(token)), logprob) for token, logprob in position.items()]
            for position in output["top_logprobs"][: len(token_ids)]
        ]
        return reply_verdict(tokens, alternatives, text, self.template.answers)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=True)

    def _run_worker(self, request: dict, folder: Path) -> dict:

        what = f"judge {self.model} ({len(request['prompt_ids'])} judge prompts)"
        result, _ = run_worker(WORKER_MODULE, request, folder, self.engine._wait, self.engine.timeout_s, what)
        if "error" in result:
            raise JudgeError(f"vLLM judge '{self.model}' failed: {result['error']}{_memory_hint(result['error'])}")
        return result
