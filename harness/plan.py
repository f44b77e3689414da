"""A suite resolved into a plan: a graph of stages, each with its hash, run folder, inputs and resource request.

    per seed:   task -> base -> sft -> reward_model          (sft only when the suite fine-tunes)
    per cell:   train:<algorithm>-s<seed> -> evaluate:<algorithm>-s<seed>
                evaluate:sft-s<seed>                          (the SFT baseline: evaluated, never trained)
    once:       report                                        (after every cell)

A stage is complete when its run folder holds its completion marker (`harness.runs.OutputFolder`); the hash in the
folder's name is the fingerprint of exactly the configuration that decides its contents, so a rerun with the
same configuration finds it and skips it, and a changed setting gets a new folder. Nothing here imports torch:
`harness plan` answers at once.

An evaluated cell waits on its baseline's evaluation too (win rates compare with the SFT samples of the same
seed) but runs without it when the baseline failed: that wait is "soft".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.algorithms.spec import algorithm
from harness.config import ResolvedConfig, fingerprint
from harness.record import BASELINE, algorithm_of
from harness.runs import OutputFolder

# Stage kinds, in the order a seed's stages run.
TASK, BASE, SFT, REWARD_MODEL, JUDGE, TRAIN, EVALUATE, REPORT = (
    "task",
    "base",
    "sft",
    "reward_model",
    "judge",
    "train",
    "evaluate",
    "report",
)
PREPARE_KINDS = (TASK, BASE, SFT, REWARD_MODEL, JUDGE)  # JUDGE only with judge.kind trained
# Kinds that run a model and so ask for a GPU when the suite runs on CUDA.
MODEL_KINDS = (SFT, REWARD_MODEL, JUDGE, TRAIN, EVALUATE)


@dataclass
class Stage:
    id: str  # unique in the plan: "sft-s0", "train:dpo-s0", "evaluate:dpo-s0", "report"
    kind: str
    seed: int | None
    arm: str | None  # the cell's arm ("dpo", "dpo@beta=0.03"; BASELINE for the SFT row); None for prepare stages
    hash: str
    folder: str  # the run folder whose completion marker says the stage is done ("" for the report)
    waits_on: list[str] = field(default_factory=list)
    soft_waits: list[str] = field(default_factory=list)  # waited for, but their failure does not block
    gpus: int = 0
    cpus: int = 1
    memory_gb: float = 0.0
    processes: int = 1  # > 1: a training stage under `accelerate launch`

    @property
    def cell(self) -> str | None:
        """The cell's name, "<arm>-s<seed>", for train and evaluate stages."""
        return f"{self.arm}-s{self.seed}" if self.arm else None

    @property
    def done(self) -> bool:
        return bool(self.folder) and OutputFolder(Path(self.folder)).done

    @property
    def label(self) -> str:
        """How progress lines name the stage."""
        if self.kind == TRAIN:
            return f"{self.cell} train"
        if self.kind == EVALUATE:
            return f"{self.cell} evaluate"
        names = {
            TASK: "task data",
            BASE: "base model",
            SFT: "SFT",
            REWARD_MODEL: "reward model",
            JUDGE: "trained judge",
            REPORT: "report",
        }
        return names[self.kind] + (f" (seed {self.seed})" if self.seed is not None else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Plan:
    suite: str
    root: Path  # <output_dir>/<suite>
    config_hash: str
    stages: list[Stage]  # in an order where every stage comes after what it waits on

    def stage(self, stage_id: str) -> Stage:
        return next(stage for stage in self.stages if stage.id == stage_id)

    def prepare_stage(self, kind: str, seed: int) -> Stage | None:
        return next((s for s in self.stages if s.kind == kind and s.seed == seed), None)

    def cell_folder(self, arm: str, seed: int) -> Path:
        evaluate = self.stage(f"{EVALUATE}:{arm}-s{seed}")
        return Path(evaluate.folder)


def lora_part(suite, stage: str) -> list:
    """The LoRA settings a stage's hash includes: none when the stage trains without adapters, so a suite that
    never uses LoRA keeps the run folders it had before LoRA existed."""
    settings = suite.lora.for_stage(stage)
    return [] if settings is None else [{"lora": settings}]


def prepare_hashes(config: ResolvedConfig, seed: int) -> dict[str, str]:
    """The hash of each prepared stage of a seed; each covers the one before it (record.PREPARE_SECTIONS)."""
    suite = config.suite
    task = fingerprint(config.task_name, dataclasses.asdict(config.task), seed)
    base = fingerprint(task, dataclasses.asdict(suite.model))
    sft = fingerprint(base, dataclasses.asdict(suite.sft), suite.precision, *lora_part(suite, "sft"))
    reward_model = fingerprint(sft, dataclasses.asdict(suite.reward_model), suite.precision)
    hashes = {TASK: task, BASE: base, SFT: sft, REWARD_MODEL: reward_model}
    if suite.judge.kind == "trained":  # its own branch of the chain: it learns from the task data alone
        hashes[JUDGE] = fingerprint(
            task, suite.judge.template, dataclasses.asdict(suite.judge.training), suite.precision
        )
    return hashes


def evaluator_part(suite) -> list:
    """The gold and judge settings a cell's hash includes: none while both are the defaults (the task's own gold,
    no judge), so suites that set neither keep the run folders they had before these settings existed."""
    if suite.gold.source == "task" and not suite.judge.enabled:
        return []
    return [{"gold": dataclasses.asdict(suite.gold), "judge": dataclasses.asdict(suite.judge)}]


def cell_hash(config: ResolvedConfig, arm: str, reward_model_hash: str) -> str:
    """A cell's identity: its seed's prepared chain, its arm (the algorithm and its sweep point, so an unswept
    algorithm keeps the hash it always had) with the arm's options, and the sections in record.*_CELL_SECTIONS."""
    suite = config.suite
    evaluation = dataclasses.asdict(suite.evaluation)
    if arm == BASELINE:
        return fingerprint(reward_model_hash, BASELINE, evaluation, *evaluator_part(suite))
    return fingerprint(
        reward_model_hash,
        arm,
        dataclasses.asdict(config.arms[arm]),
        dataclasses.asdict(suite.sampling),
        dataclasses.asdict(suite.rollouts),  # hf and vllm rollouts are different runs (their samplers differ)
        dataclasses.asdict(suite.reward),
        dataclasses.asdict(suite.budget),
        evaluation,
        suite.precision,
        *lora_part(suite, algorithm_of(arm)),
        *evaluator_part(suite),
    )


def build_plan(config: ResolvedConfig) -> Plan:
    suite = config.suite
    root = Path(suite.output_dir).resolve() / suite.name
    model_gpus = _gpus_per_stage(suite)
    launcher = suite.launcher

    def stage(stage_id, kind, seed, arm, stage_hash, folder, waits_on=(), soft_waits=(), processes=1):
        gpus = (model_gpus * processes) if kind in MODEL_KINDS else 0
        return Stage(
            stage_id,
            kind,
            seed,
            arm,
            stage_hash,
            str(folder),
            list(waits_on),
            list(soft_waits),
            gpus,
            suite.executor.cpus_per_stage,
            suite.executor.memory_gb,
            processes,
        )

    stages: list[Stage] = []
    cells: list[str] = []
    for seed in suite.seeds:
        hashes = prepare_hashes(config, seed)
        prepare = root / "prepare"
        stages.append(stage(f"task-s{seed}", TASK, seed, None, hashes[TASK], prepare / f"task-s{seed}-{hashes[TASK]}"))
        stages.append(
            stage(
                f"base-s{seed}",
                BASE,
                seed,
                None,
                hashes[BASE],
                prepare / f"base-s{seed}-{hashes[BASE]}",
                [f"task-s{seed}"],
            )
        )
        policy = f"base-s{seed}"
        if suite.sft.enabled:
            stages.append(
                stage(f"sft-s{seed}", SFT, seed, None, hashes[SFT], prepare / f"sft-s{seed}-{hashes[SFT]}", [policy])
            )
            policy = f"sft-s{seed}"
        reward_id = f"reward_model-s{seed}"
        stages.append(
            stage(
                reward_id,
                REWARD_MODEL,
                seed,
                None,
                hashes[REWARD_MODEL],
                prepare / f"reward_model-s{seed}-{hashes[REWARD_MODEL]}",
                [policy],
            )
        )

        evaluate_waits = [reward_id]
        if JUDGE in hashes:
            judge_id = f"judge-s{seed}"
            stages.append(
                stage(
                    judge_id,
                    JUDGE,
                    seed,
                    None,
                    hashes[JUDGE],
                    prepare / f"judge-s{seed}-{hashes[JUDGE]}",
                    [f"task-s{seed}"],
                )
            )
            evaluate_waits.append(judge_id)
        baseline_hash = cell_hash(config, BASELINE, hashes[REWARD_MODEL])
        baseline_id = f"{EVALUATE}:{BASELINE}-s{seed}"
        stages.append(
            stage(
                baseline_id,
                EVALUATE,
                seed,
                BASELINE,
                baseline_hash,
                root / "cells" / f"{BASELINE}-s{seed}-{baseline_hash}",
                evaluate_waits,
            )
        )
        cells.append(baseline_id)
        for arm in config.selected_arms:
            the_hash = cell_hash(config, arm, hashes[REWARD_MODEL])
            folder = root / "cells" / f"{arm}-s{seed}-{the_hash}"
            train_id = f"{TRAIN}:{arm}-s{seed}"
            # An inference-time method trains nothing: one process, whatever the launcher says.
            processes = launcher.num_processes if trains_policy(arm) else 1
            stages.append(
                stage(train_id, TRAIN, seed, arm, the_hash, folder / "train", [reward_id], processes=processes)
            )
            stages.append(
                stage(
                    f"{EVALUATE}:{arm}-s{seed}",
                    EVALUATE,
                    seed,
                    arm,
                    the_hash,
                    folder,
                    [train_id, *evaluate_waits[1:]],
                    [baseline_id],
                )
            )
            cells.append(f"{EVALUATE}:{arm}-s{seed}")
    stages.append(stage(REPORT, REPORT, None, None, "", "", soft_waits=cells))
    return Plan(suite.name, root, fingerprint(config.to_dict()), stages)


def trains_policy(arm: str) -> bool:
    """Whether the arm's algorithm changes weights (its spec's trains_policy); importing it loads no torch."""
    return algorithm(algorithm_of(arm)).spec.trains_policy


def parallel_workers(suite) -> int:
    """Stages the executor runs at once here: executor.max_parallel, where "auto" counts this machine's GPUs
    (in stages' worth: a stage of two GPUs takes two) when the suite runs on CUDA, else its cores."""
    per_stage = _gpus_per_stage(suite)
    gpu_slots = visible_gpu_count() // per_stage if per_stage else 0
    return suite.executor.workers(gpu_slots, len(os.sched_getaffinity(0)))


def _gpus_per_stage(suite) -> int:
    """GPUs one process of a model stage asks for: executor.gpus_per_stage, or 1 when the suite runs on CUDA."""
    if suite.executor.gpus_per_stage >= 0:
        return suite.executor.gpus_per_stage
    if suite.device == "cuda" or (suite.device == "auto" and visible_gpu_count() > 0):
        return 1
    return 0


def visible_gpu_count() -> int:
    """GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES when set, else the devices the
    NVIDIA driver lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"])
    driver = Path("/proc/driver/nvidia/gpus")
    return len(list(driver.iterdir())) if driver.is_dir() else 0
