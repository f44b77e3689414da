"""What the TRL-backed trainers share: common TrainingArguments and the MLflow step-metrics bridge.

Imported only from inside `train` functions, so it may import transformers at module level.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback


def common_training_arguments(
    suite, seed: int, output_dir, *, learning_rate: float, lr_scheduler: str, max_steps: int = -1, epochs: float = 1.0
) -> dict:
    """Arguments every TRL trainer of the harness gets, so no library default differs between algorithms."""
    use_cpu = suite.device == "cpu" or not _cuda_available()
    return dict(
        output_dir=str(output_dir / "trainer"),
        seed=seed,
        data_seed=seed,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler,
        warmup_steps=0,
        max_steps=max_steps,  # -1: train for num_train_epochs instead
        num_train_epochs=epochs,
        logging_steps=1,
        save_strategy="steps" if suite.checkpoint_every else "no",
        save_steps=suite.checkpoint_every or 500,
        save_total_limit=1,  # the newest checkpoint is all a resume needs
        report_to="none",  # metrics reach MLflow through StepMetricsCallback, into the cell's own run
        use_cpu=use_cpu,
        bf16=suite.precision == "bf16",
        dataloader_num_workers=0,
        disable_tqdm=True,  # progress goes through the harness's own bar (TrainingProgressCallback)
        gradient_accumulation_steps=1,
        gradient_checkpointing=suite.gradient_checkpointing,
        # PPO.md §6.7: the non-reentrant variant is the one that works with frozen inputs and LoRA.
        gradient_checkpointing_kwargs={"use_reentrant": False} if suite.gradient_checkpointing else None,
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class StepMetricsCallback(TrainerCallback):
    """Forward every trainer log line to the cell's MLflow run as train/<name> at the global step."""

    def __init__(self, log_metrics):
        self.log_metrics = log_metrics

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {
            _metric_name(key): float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        }
        if numeric:
            self.log_metrics(state.global_step, numeric)


class TrainingProgressCallback(TrainerCallback):
    """Drive the harness's progress bar: one tick per optimizer step, total known when training begins."""

    def __init__(self, progress):
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress(0, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress(1)


class DivergenceError(RuntimeError):
    """A training statistic became NaN or infinite: the run has diverged and its cell ends as FAILED."""


class DivergenceGuard(TrainerCallback):
    """Check every logged step: a NaN or infinite loss, reward, KL or gradient norm stops training at once,
    instead of spending the rest of the budget on a broken model."""

    WATCHED = ("loss", "reward", "kl", "grad_norm", "rewards/margins", "rewards/chosen")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.WATCHED:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(float(value)):
                raise DivergenceError(f"training diverged: {key}={value} at step {state.global_step}")


class SnapshotCallback(TrainerCallback):
    """Save the policy at chosen optimizer steps, for the evaluator's intermediate checkpoints."""

    def __init__(self, steps: set[int], folder, base_dir):
        self.steps, self.folder, self.base_dir = steps, folder, base_dir

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from harness.algorithms.context import save_snapshot

        if state.global_step in self.steps and state.is_world_process_zero:
            save_snapshot(model, self.base_dir, self.folder / f"step-{state.global_step}")


def harness_callbacks(log_metrics, progress, context=None, total_steps: int = 0) -> list[TrainerCallback]:
    """Divergence guard, MLflow step metrics, the progress bar, and (for an algorithm's context) snapshots."""
    callbacks = [DivergenceGuard(), StepMetricsCallback(log_metrics), TrainingProgressCallback(progress)]
    if context is not None and context.snapshots:
        from harness.algorithms.context import snapshot_steps

        steps = snapshot_steps(total_steps, context.snapshots)
        callbacks.append(SnapshotCallback(steps, context.snapshot_dir, context.base_dir))
    return callbacks


def train_resuming(trainer, output_dir) -> None:
    """Train, continuing from the newest complete checkpoint an interrupted attempt left in output_dir/trainer.

    transformers restores the model, optimizer, scheduler, RNG states and the data position from it."""
    trainer.train(resume_from_checkpoint=newest_complete_checkpoint(output_dir / "trainer"))


def newest_complete_checkpoint(folder) -> str | None:
    """The newest checkpoint-N folder that was written to the end, removing any that a kill cut short.

    transformers writes trainer_state.json last and only then deletes the older checkpoint, so a folder
    whose state file is missing or unreadable is a save interrupted midway, and the older one still exists."""
    import json
    import shutil

    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]), reverse=True)
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            shutil.rmtree(candidate, ignore_errors=True)
            continue
        return str(candidate)
    return None


def save_trained_policy(trainer, base_dir, tokenizer, output_dir):
    """Write the trained policy to output_dir/model as a standard HF folder (merged when trained with LoRA)."""
    from harness.algorithms.lora import save_policy

    checkpoint = output_dir / "model"
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        save_policy(trainer.accelerator.unwrap_model(trainer.model), base_dir, checkpoint)
        tokenizer.save_pretrained(checkpoint)
    trainer.accelerator.wait_for_everyone()
    return checkpoint


def silence_console_logging(trainer) -> None:
    """The Trainer prints every log dict to the console (PrinterCallback when tqdm is off); the same numbers
    already reach MLflow, and the console keeps one line per stage and one bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _metric_name(key: str) -> str:
    # MLflow metric names allow "/" but not some characters TRL uses in its keys; keep them readable.
    return key.replace("(", "_").replace(")", "").replace(" ", "_")


def steps_for_budget(budget, prompts_per_step: int, completions_per_prompt: int) -> int:
    """Optimizer steps that spend the suite's budget (harness.config.BudgetConfig) at this step size."""
    return max(1, math.ceil(budget.prompts_for(completions_per_prompt) / prompts_per_step))
