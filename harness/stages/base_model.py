"""The base stage: a seed's base model, built tiny from the task's vocabulary or loaded pretrained."""

from __future__ import annotations

from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_pretrained_base, save_checkpoint
from harness.plan import TASK
from harness.stages.context import StageContext
from harness.stages.inputs import task_module
from harness.stages.outcomes import COMPLETE, outcome
from harness.tasks.common import load_task_data, words_of


def run(context: StageContext) -> dict:

    seed, model_config = context.stage.seed, context.suite.model
    with context.timed("other") as folder:
        if model_config.source == "build":
            # The embedded task knows its vocabulary; any other task gets one from its own data, which makes
            # tiny stand-in models for the real suites possible.
            module = task_module(context.config.task_name)
            if hasattr(module, "vocabulary"):
                vocabulary = module.vocabulary()
            else:
                vocabulary = words_of(load_task_data(context.prepared_folder(TASK, seed) / "data.json"))
            chatml = model_config.chat_template == "always"  # a built tokenizer has no template unless asked for one
            if chatml:
                vocabulary = vocabulary + [w for w in model_config.system_prompt.split() if w not in vocabulary]
            tokenizer = build_word_tokenizer(vocabulary, model_config.max_positions, chatml=chatml)
            model = build_tiny_causal_lm(model_config, tokenizer, seed)
        else:
            model, tokenizer = load_pretrained_base(model_config)
        save_checkpoint(model, tokenizer, folder / "model")
    # Prompts that leave no room for a completion are refused now, before anything trains on them.
    context.task_inputs(seed)
    return outcome(context.stage, COMPLETE)
