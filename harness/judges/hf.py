"""judge.backend hf (and every trained judge): one transformers forward pass per comparison.

The judge reads the rendered comparison up to where it answers; its verdict is the probability of the first
label's first token against the second's at that next position, renormalised over the two, so it never
generates and is never unparseable. Comparisons are batched shortest first with right padding: every real
token keeps its unpadded position (absolute-position models such as GPT-2 see the same input as alone), the
causal mask hides the padding that follows it, and each row is read at its own last token, so padding
cannot change an answer.
"""

from __future__ import annotations

import logging

from harness.judges.base import OrderVerdict
from harness.judges.pairwise import PairwiseJudge, answer_token_ids, probability_verdict
from harness.judges.templates import JudgeTemplate, prompt_token_ids
from harness.modeling import auto_tokenizer, context_length, load_causal_lm, resolve_device

logger = logging.getLogger(__name__)


class HFJudge(PairwiseJudge):
    def __init__(self, model_folder: str, template: JudgeTemplate, batch_size: int, device: str):

        self.model_folder, self.template, self.batch_size = str(model_folder), template, batch_size
        self.device = resolve_device(device)
        self.tokenizer = auto_tokenizer(self.model_folder)
        self.answer_ids = answer_token_ids(self.tokenizer, template.answers, f"judge model '{self.model_folder}'")
        self.model = load_causal_lm(self.model_folder, self.device)
        # Right padding hides whatever fills the rows; a model without a pad token is padded with EOS (or 0).
        self.pad_id = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        self.context = context_length(self.model_folder)
        logger.info("hf judge %s on %s, template %s", self.model_folder, self.device, template.name)

    def judge_orders(self, orders: list[tuple[str, str, str]]) -> list[OrderVerdict]:
        ids = [prompt_token_ids(self.tokenizer, self.template.messages(*order)) for order in orders]
        longest = max(len(row) for row in ids)
        if self.context is not None and longest > self.context:
            raise ValueError(
                f"a judge prompt of {longest} tokens exceeds the {self.context} positions of judge model "
                f"'{self.model_folder}' (shorten judge.template or the answers)"
            )
        verdicts: list[OrderVerdict | None] = [None] * len(ids)
        by_length = sorted(range(len(ids)), key=lambda index: len(ids[index]))  # little padding per batch
        for start in range(0, len(by_length), self.batch_size):
            batch = by_length[start : start + self.batch_size]
            for index, (first, second) in zip(batch, self._label_logprobs([ids[i] for i in batch]), strict=True):
                verdicts[index] = probability_verdict(first, second, self.template.answers)
        return verdicts

    def _label_logprobs(self, rows: list[list[int]]) -> list[tuple[float, float]]:
        """Both labels' log-probabilities at the position after each row's last token."""
        import torch

        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, token_ids in enumerate(rows):
            input_ids[row, : len(token_ids)] = torch.tensor(token_ids)
            attention_mask[row, : len(token_ids)] = 1
        last = attention_mask.sum(dim=1) - 1
        positions = torch.unique(last)  # logits only where some row ends: batch x vocabulary, not x width
        with torch.no_grad():
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                logits_to_keep=positions.to(self.device),
            ).logits
        column = torch.searchsorted(positions, last).to(self.device)
        at_answer = logits[torch.arange(len(rows), device=self.device), column].float()
        logprobs = torch.log_softmax(at_answer, dim=-1)[:, list(self.answer_ids)].cpu()
        return [(float(first), float(second)) for first, second in logprobs.tolist()]

    def close(self) -> None:
        import torch

        del self.model
        if torch.cuda.is_initialized():  # the model's memory back to the GPU for the next stage's models
            import gc

            gc.collect()
            torch.cuda.empty_cache()
