"""A multi-process training stage: its ranks started by `accelerate launch`, each `python -m harness.stages
<stage.json> --rank` (harness.stages.runner.main)."""

from __future__ import annotations

import logging
import sys

from harness.config import CONFIGS_DIR
from harness.processes import start_group, wait_or_stop
from harness.stages.context import StageContext
from harness.stages.files import log_path

logger = logging.getLogger(__name__)


def launch_ranks(context: StageContext) -> None:
    """`accelerate launch` this stage file's training on launcher.num_processes processes. Never with `--cpu`:
    accelerate 1.15 then starts one process whatever N is; without it torchrun starts N, and each rank joins a
    gloo group on the CPU because the algorithm asks Accelerate for the CPU there (suite.device)."""
    import subprocess

    launcher, stage_path = context.suite.launcher, context.path
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS_DIR / "accelerate" / f"{launcher.config}.yaml"),
        "--num_processes",
        str(launcher.num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "harness.stages",
        str(stage_path),
        "--rank",
    ]
    logger.info("launching: %s", " ".join(command))
    ranks_log = log_path(stage_path).with_suffix(".ranks.log")
    with open(ranks_log, "a") as log:
        code = wait_or_stop(start_group(command, stdout=log, stderr=subprocess.STDOUT))
    if code != 0:
        raise RuntimeError(f"accelerate launch of {launcher.num_processes} processes exited {code} (log: {ranks_log})")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
