"""A cell's MLflow child run: opened by the cell's first stage (train, or evaluate for the SFT baseline) and
reopened by the next through the run id kept in the cell's folder, so that a stage retried or rerun continues
the same run; tagged with what identifies the cell and what its algorithm declares; ended FAILED (with the
reason), KILLED or FINISHED."""

from __future__ import annotations

import contextlib
import dataclasses
import traceback

from harness import record
from harness.algorithms.spec import algorithm
from harness.config import flatten
from harness.runs import OutOfSpace, manifest, write_json
from harness.stages.inputs import Prepared
from harness.stages.outcomes import one_line

RUN_ID_FILE = "mlflow_run_id"  # in the cell's folder: the run its stages share


def open_cell_run(context, prepared: Prepared) -> str:
    """The cell's child run: the one an earlier stage (or attempt) of this cell opened, else a new one."""
    folder = context.cell_folder()
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / RUN_ID_FILE
    earlier = id_file.read_text().strip() if id_file.is_file() else None
    tracker = context.tracker
    if tracker.resumable_cell(earlier):
        tracker.reopen(earlier)
        tracker.set_tags(earlier, {record.TAG_STATUS: record.STATUS_RUNNING})
        return earlier
    stage, suite = context.stage, context.suite
    arm = stage.arm
    run_id = tracker.start_cell(
        context.invocation.parent_run_id,
        stage.cell,
        {
            record.TAG_SUITE: suite.name,
            record.TAG_ARM: arm,
            record.TAG_ALGORITHM: record.algorithm_of(arm),
            record.TAG_SWEEP_POINT: record.sweep_point_of(arm),
            **_algorithm_tags(context, arm),
            record.TAG_SEED: str(stage.seed),
            record.TAG_CELL_HASH: stage.hash,
            record.TAG_STATUS: record.STATUS_RUNNING,
            record.TAG_GENERATOR: context.invocation.generator,
            record.TAG_TRAINING_REWARD: suite.reward.source,
            record.TAG_PROMPT_FORMAT: prepared.inputs.prompt_format,
            record.TAG_GOLD: suite.gold.label if _has_gold(suite, prepared) else "none",
            record.TAG_JUDGE: suite.judge.label,
            record.TAG_LORA_STAGES: ",".join(step for step in record.lora_stages(arm) if suite.lora.for_stage(step)),
        },
    )
    id_file.write_text(run_id)
    config_dict = context.config.to_dict()
    # The cell's own algorithm section, at its sweep point: algorithms.dpo.beta is the value this arm trained with.
    config_dict["algorithms"] = (
        {} if arm == record.BASELINE else {record.algorithm_of(arm): dataclasses.asdict(context.config.arms[arm])}
    )
    tracker.log_params(run_id, flatten(config_dict))
    write_json(folder / "resolved_config.json", config_dict)
    write_json(folder / "manifest.json", manifest(stage.hash, prepared.inputs.data_fingerprint))
    prepare_metrics = {"reward_model_accuracy": prepared.reward_model_metrics["heldout_accuracy"]}
    tracker.log_metrics(run_id, {f"{record.PREPARE_PREFIX}{name}": value for name, value in prepare_metrics.items()})
    return run_id


def log_judge_agreement(tracker, run_id: str, prepared: Prepared) -> None:
    """The trained judge's agreement with gold, on the cell's run by its evaluation (the stage that waits for
    the judge; the cell's training may have opened the run before the judge was trained)."""
    agreement = prepared.judge_metrics.get(record.PREPARE_JUDGE_AGREEMENT)
    if agreement is not None:
        tracker.log_metrics(run_id, {f"{record.PREPARE_PREFIX}{record.PREPARE_JUDGE_AGREEMENT}": agreement})


def _algorithm_tags(context, arm: str) -> dict[str, str]:
    """What the arm's algorithm declares (harness.algorithms.spec.AlgorithmSpec), so that a report is rebuilt
    from MLflow alone; empty values for the SFT baseline, which has no algorithm."""
    if arm == record.BASELINE:
        return {
            record.TAG_FAMILY: "",
            record.TAG_KL_KNOB: "",
            record.TAG_KL_KNOB_RAISES_KL: "false",
            record.TAG_CURVES: "",
            record.TAG_DATA: "",
        }

    spec = algorithm(record.algorithm_of(arm)).spec
    return {
        record.TAG_FAMILY: spec.family,
        record.TAG_KL_KNOB: spec.kl_knob,
        record.TAG_KL_KNOB_RAISES_KL: "true" if spec.kl_knob_raises_kl else "false",
        record.TAG_CURVES: ",".join(spec.curves),
        record.TAG_DATA: spec.describe_data(context.config.arms[arm]),
    }


def _has_gold(suite, prepared: Prepared) -> bool:
    return suite.gold.source == "reward_model" or prepared.inputs.task_module.HAS_GOLD_REWARD


@contextlib.contextmanager
def cell_attempt(context, run_id: str):
    """A cell's failure ends its MLflow run FAILED with the reason (and the traceback in the cell folder),
    an interruption ends it KILLED; the other cells go on either way (DESIGN §4)."""
    tracker = context.tracker
    try:
        yield
    except KeyboardInterrupt:
        tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_KILLED})
        tracker.finish(run_id, "KILLED")
        raise
    except Exception as error:
        with contextlib.suppress(OSError):  # on a full disk the traceback cannot be kept; the reason still is
            (context.cell_folder() / "failure.txt").write_text(traceback.format_exc())
        mark_cell_failed(tracker, run_id, str(error) if isinstance(error, OutOfSpace) else one_line(error))
        raise


def mark_cell_failed(tracker, run_id: str, reason: str) -> None:
    tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_FAILED, record.TAG_FAILURE: reason[:4000]})
    tracker.finish(run_id, "FAILED")


def finish_cell_run(tracker, run_id: str) -> None:
    """The cell's last stage is done: its run ends FINISHED."""
    tracker.set_tags(run_id, {record.TAG_STATUS: record.STATUS_COMPLETE})
    tracker.finish(run_id, "FINISHED")
