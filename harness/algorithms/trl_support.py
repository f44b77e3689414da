"""What the TRL-backed trainers share: common TrainingArguments and the MLflow step-metrics bridge.

Imported only from inside `train` functions, so it may import transformers at module level.

Several processes (`accelerate launch`, DESIGN.md §9): the Trainer wraps the model in DDP and gives every rank
its own share of each batch; TRL gathers its logged statistics over ranks, so the values a callback sees are
global and identical on every rank. The callbacks below forward them and move the progress bar from the main
process only; the divergence guard runs on every rank so that all of them stop together. Checkpoints the
harness hands on (output_dir/model, snapshots) are written by the main process behind barriers, and no
pickled `training_args.bin` is left in any folder the harness writes (see `NoPickleInCheckpointsCallback`).
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from harness import record
from harness.algorithms.context import TrainResult, save_snapshot
from harness.algorithms.lora import save_policy
from harness.errors import ConfigError
from harness.runs import RESUME_CHECKPOINTS_DIR


def common_training_arguments(
    suite, seed: int, output_dir, *, learning_rate: float, lr_scheduler: str, max_steps: int = -1, epochs: float = 1.0
) -> dict:
    """Arguments every TRL trainer of the harness gets, so no library default differs between algorithms."""
    use_cpu = suite.device == "cpu" or not _cuda_available()
    return dict(
        output_dir=str(output_dir / RESUME_CHECKPOINTS_DIR),
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


def launched_world_size() -> int:
    """Processes the launcher started for this stage. `accelerate launch` (torchrun underneath) sets WORLD_SIZE,
    RANK and LOCAL_RANK on every process; a plain `python` process has none and is a world of one. Read from the
    environment because the per-device batch sizes must be known before the Trainer builds its Accelerator."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def check_process_group(num_processes: int) -> None:
    """Refuse a run whose processes did not join one group: each would train alone on the whole budget and
    write the same checkpoint. It happens when `accelerate launch` starts N processes on a machine without a
    GPU and the process does not ask Accelerate for the CPU (which is what makes it form a gloo group)."""
    launched = launched_world_size()
    if launched != num_processes:
        raise RuntimeError(
            f"launched as {launched} processes (WORLD_SIZE) but Accelerate formed a group of {num_processes}; "
            "on a machine without a GPU set suite device=cpu (or ACCELERATE_USE_CPU=true)"
        )


def per_device_batch_size(global_batch: int, key: str) -> int:
    """The per-device batch that keeps the global batch (the config's number) whatever the number of processes:
    global / world size, which must divide exactly, so the same budget is spent in the same number of steps."""

    world_size = launched_world_size()
    if global_batch % world_size != 0:
        raise ConfigError(f"'{key}' ({global_batch}) must be divisible by the {world_size} processes")
    return global_batch // world_size


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class StepMetricsCallback(TrainerCallback):
    """Forward every trainer log line to the cell's MLflow run as train/<name> at the global step, with the
    shared curves every algorithm logs under one name and unit (record.TRAIN_BUDGET_FRACTION, and
    record.TRAIN_KL_PER_SEQUENCE where the algorithm's `sequence_kl(logs)` derives it from its trainer's own
    statistics)."""

    def __init__(self, log_metrics, sequence_kl=None, flush=None):
        self.log_metrics = log_metrics
        self.sequence_kl = sequence_kl
        self.flush = flush
        self.logged: set[tuple[str, int]] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:  # every rank logs the same gathered values: record them once
            return
        # The Trainer's closing summary repeats `epoch` at the last step: one point per (name, step) is kept.
        numeric = {
            _metric_name(key): float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, (int, float))
            and math.isfinite(float(value))
            and (_metric_name(key), state.global_step) not in self.logged
        }
        if numeric and state.max_steps > 0:
            numeric[record.TRAIN_BUDGET_FRACTION] = state.global_step / state.max_steps
        kl = self.sequence_kl(logs or {}) if self.sequence_kl is not None else None
        if kl is not None and math.isfinite(kl):
            numeric[record.TRAIN_KL_PER_SEQUENCE] = kl
        numeric = {name: value for name, value in numeric.items() if (name, state.global_step) not in self.logged}
        self.logged |= {(name, state.global_step) for name in numeric}
        if numeric:
            self.log_metrics(state.global_step, numeric)
        # The Trainer saves a resume checkpoint right after this log (logging_steps is 1): the curve up to it is
        # written first, so a checkpoint is never ahead of what MLflow holds. A store that fails here fails the
        # stage before the checkpoint exists, and the rerun logs those steps again from the one before.
        if control.should_save and self.flush is not None:
            self.flush()


class TrainingProgressCallback(TrainerCallback):
    """Drive the harness's progress bar: one tick per optimizer step, total known when training begins."""

    def __init__(self, progress):
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress(0, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress(1)


class DivergenceError(RuntimeError):
    """A training statistic became NaN or infinite: the run has diverged and its cell ends as FAILED."""


class DivergenceGuard(TrainerCallback):
    """Check every logged step: a NaN or infinite value of a watched statistic (the algorithm module's WATCHED:
    its loss, reward, KL, gradient norm) stops training at once, instead of spending the rest of the budget on a
    broken model."""

    def __init__(self, watched):
        self.watched = tuple(watched)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.watched:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(float(value)):
                raise DivergenceError(f"training diverged: {key}={value} at step {state.global_step}")


class SnapshotCallback(TrainerCallback):
    """Save the policy at chosen optimizer steps, for the evaluator's intermediate checkpoints.

    The main process writes it (DDP keeps the same weights on every rank) before it takes its next step, so a
    snapshot is complete on disk before training ends there; the other ranks wait at the next all-reduce.
    Where the weights are sharded (ZeRO-3, FSDP) every rank first takes part in gathering them, which needs the
    trainer (`attach_trainer`)."""

    def __init__(self, steps: set[int], folder, base_dir):
        self.steps, self.folder, self.base_dir = steps, folder, base_dir
        self.trainer = None

    def on_step_end(self, args, state, control, model=None, **kwargs):

        if state.global_step not in self.steps:
            return
        state_dict = gathered_state_dict(self.trainer) if self.trainer is not None else None
        if not state.is_world_process_zero:
            return
        folder = self.folder / f"step-{state.global_step}"
        if state_dict is None:
            save_snapshot(model, self.base_dir, folder)
        else:
            save_policy(model, self.base_dir, folder, state_dict=state_dict)
            if self.trainer.processing_class is not None:
                self.trainer.processing_class.save_pretrained(folder)


def attach_trainer(trainer) -> None:
    """Give the snapshot callback its trainer (built after the callbacks), for sharded-weight gathering."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, SnapshotCallback):
            callback.trainer = trainer


def gathered_state_dict(trainer):
    """The full weights when the Trainer shards them (DeepSpeed, FSDP), gathered with every rank taking part,
    as `Trainer.save_model` does; None with one process or DDP, where the main process's model is whole.
    Must be called on every rank."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    if getattr(trainer, "is_deepspeed_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None


class NoPickleInCheckpointsCallback(TrainerCallback):
    """Delete the pickled `training_args.bin` the Trainer writes into every resume checkpoint (checkpoint-N).

    Loading it would need `torch.load(weights_only=False)`, i.e. unpickling arbitrary code. transformers
    5.17 never reads it when it resumes (`_load_from_checkpoint`, `_load_optimizer_and_scheduler` and
    `_load_rng_state` read weights, optimizer, scheduler and RNG states with `weights_only=True`; the arguments
    come from the harness's config), so the checkpoint stays resumable without it. The harness's own folders
    (output_dir/model, snapshots) are written by `save_pretrained`, which writes no pickle at all."""

    def on_save(self, args, state, control, **kwargs):
        from pathlib import Path

        if state.is_world_process_zero:
            pickled = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "training_args.bin"
            pickled.unlink(missing_ok=True)


def harness_callbacks(
    log_metrics,
    progress,
    context=None,
    total_steps: int = 0,
    *,
    watched=("loss", "grad_norm"),
    sequence_kl=None,
    flush_metrics=None,
) -> list[TrainerCallback]:
    """Divergence guard over `watched` (the algorithm's WATCHED), MLflow step metrics with the shared curves
    (written out at every resume checkpoint by `flush_metrics`, an algorithm's context's own by default), the
    progress bar, no pickles in checkpoints, and (for an algorithm's context) snapshots."""
    if flush_metrics is None and context is not None:
        flush_metrics = context.flush_metrics
    callbacks = [
        DivergenceGuard(watched),
        StepMetricsCallback(log_metrics, sequence_kl, flush_metrics),
        TrainingProgressCallback(progress),
        NoPickleInCheckpointsCallback(),
    ]
    if context is not None and context.snapshots:
        from harness.algorithms.context import snapshot_steps

        steps = snapshot_steps(total_steps, context.snapshots)
        callbacks.append(SnapshotCallback(steps, context.snapshot_dir, context.base_dir))
    return callbacks


def train_and_save(trainer, context, tokenizer, spend):
    """What every TRL-backed algorithm does once its trainer is built: give the snapshot callback its trainer,
    keep the console quiet, train (resuming from the newest complete checkpoint), save the policy to
    output_dir/model; returns the TrainResult with `spend(trainer)` (global counts, read after training because
    some come from the trainer's log) and the optimizer steps taken."""

    attach_trainer(trainer)  # snapshots gather sharded weights through it (ZeRO-3, FSDP)
    silence_console_logging(trainer)
    train_resuming(trainer, context.output_dir)
    checkpoint = save_trained_policy(trainer, context.base_dir, tokenizer, context.output_dir)
    steps = trainer.state.global_step
    return TrainResult(
        checkpoint_dir=checkpoint, final_step=steps, spend={**spend(trainer), record.COST_OPTIMIZER_STEPS: float(steps)}
    )


def train_resuming(trainer, output_dir) -> None:
    """Train, continuing from the newest complete checkpoint an interrupted attempt left in output_dir/trainer.

    transformers restores the model, optimizer, scheduler, RNG states and the data position from it."""
    trainer.train(resume_from_checkpoint=newest_complete_checkpoint(output_dir / RESUME_CHECKPOINTS_DIR))


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

    checkpoint = output_dir / "model"
    trainer.accelerator.wait_for_everyone()
    state_dict = gathered_state_dict(trainer)  # every rank: a collective where the weights are sharded
    if trainer.is_world_process_zero():  # written once
        save_policy(trainer.accelerator.unwrap_model(trainer.model), base_dir, checkpoint, state_dict=state_dict)
        tokenizer.save_pretrained(checkpoint)
    trainer.accelerator.wait_for_everyone()  # complete on disk before train() returns on any rank
    return checkpoint


def save_trained_classifier(trainer, tokenizer, output_dir):
    """Write a trained sequence classifier (the reward model) to output_dir/model with `save_pretrained`:
    `Trainer.save_model` would also pickle the TrainingArguments into the folder as training_args.bin."""
    checkpoint = output_dir / "model"
    trainer.accelerator.wait_for_everyone()
    state_dict = gathered_state_dict(trainer)  # every rank: a collective where the weights are sharded
    if trainer.is_world_process_zero():  # written once
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(checkpoint, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(checkpoint)
    trainer.accelerator.wait_for_everyone()
    return checkpoint


def silence_console_logging(trainer) -> None:
    """The Trainer prints every log dict to the console (PrinterCallback when tqdm is off); the same numbers
    already reach MLflow, and the console keeps one line per stage and one bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def grpo_sequence_kl(logs: dict, terminated_only: bool = False) -> float | None:
    """Per-sequence KL (nats) from GRPOTrainer's (or RLOOTrainer's) statistics: its `kl` is the token mean of the
    KL estimate over the step's completions (grpo_trainer: masked mean over the completion mask's tokens), and
    `completions/mean_length` their mean length, so the product is the sum per completion averaged over
    completions. With `mask_truncated_completions` the mask keeps only completions that stopped, so their mean
    length (`completions/mean_terminated_length`) is the one that matches (`terminated_only`). None on steps
    where TRL logged no KL (beta 0: it never computes one)."""
    length = "completions/mean_terminated_length" if terminated_only else "completions/mean_length"
    if "kl" not in logs or length not in logs:
        return None
    return float(logs["kl"]) * float(logs[length])


def logged_completion_tokens(trainer, completions_per_entry: int) -> float:
    """Tokens generated, from the trainer's log history (so it survives a resume): each entry with a
    `completions/mean_length` (gathered over ranks) stands for `completions_per_entry` completions."""
    return float(
        sum(
            entry["completions/mean_length"] * completions_per_entry
            for entry in trainer.state.log_history
            if "completions/mean_length" in entry
        )
    )


def _metric_name(key: str) -> str:
    # MLflow metric names allow "/" but not some characters TRL uses in its keys; keep them readable.
    return key.replace("(", "_").replace(")", "").replace(" ", "_")


def steps_for_budget(budget, prompts_per_step: int, completions_per_prompt: int) -> int:
    """Optimizer steps that spend the suite's budget (harness.config.BudgetConfig) at this step size."""
    return max(1, math.ceil(budget.prompts_for(completions_per_prompt) / prompts_per_step))
