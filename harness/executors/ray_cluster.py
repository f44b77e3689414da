"""The Ray executor: the plan's stages on long-lived Ray actors (StageWorker), each a worker process that keeps
torch, transformers and TRL imported from one stage to the next, on whichever node has room.

- `ray.address=local` starts a Ray instance on this machine for the run; `auto` joins the cluster `ray start`
  made this machine part of; `<host>:<port>` joins that cluster's head.
- The driver hands a stage to an actor once what it waits on has settled (harness.executors.scheduler): up to
  executor.max_parallel actors ("auto": one per GPU of the cluster on a CUDA suite, else one per CPU), each
  asking for one stage's CPUs, GPUs and memory. An actor runs `harness.stages.runner.execute`, which frees what
  the stage cached on its GPU before the next one.
- A stage that fails by itself returns a failed outcome, is never retried, and its actor is replaced; an actor
  that dies (killed, out of memory, node lost) is replaced and its stage started again `executor.retries`
  times, resuming in the same MLflow run. When none is left, that stage fails alone: its cell's run is marked
  FAILED, the other cells go on.
- Ctrl-C (or SIGTERM) kills every actor; the cells they ran are marked KILLED and the rerun resumes.
- The cluster is joined before anything of the run is made (`joined_cluster`, from the pipeline's checks before
  the banner): a malformed `ray.address` is refused without connecting, a head that does not answer after a
  bounded TCP connect, a cluster that refuses this driver (a token it lacks) when `ray.init` gives up (~20 s);
  one line naming `ray.address`, Ray's own log lines kept out of the terminal.
- A worker that dies takes its stage's `accelerate launch` ranks with it (parent-death signals,
  `harness.processes`).
- Run folders must be on storage every node sees, and the MLflow store must be a tracking server: a cluster
  with a node other than this machine is refused with a SQLite store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from harness.executors import close_cell_run
from harness.executors.scheduler import run_stages
from harness.plan import Stage
from harness.runs import RunRefused
from harness.stages.files import log_path
from harness.stages.outcomes import FAILED, one_line, outcome
from harness.stages.runner import execute
from harness.tracking_retry import ANSWERED_ENV

logger = logging.getLogger(__name__)


# A refused cluster is said in under 30 s: the name lookup and the TCP connect to the head's GCS port are bounded,
# and `ray.init` itself gives up after about 20 s (Ray 2.60, e.g. when the cluster needs a token we lack).
RESOLVE_SECONDS = 5.0
CONNECT_SECONDS = 5.0
ADDRESS_FORMS = "local, auto, <host>:<port> or ray://<host>:<port>"


def head_of(address: str) -> tuple[str, int] | None:
    """The (host, port) that `ray.address` names; None for `local` and `auto`; RunRefused for anything else
    (no port, a port out of range, a host that is no host name or IP address such as 256.1.1.1)."""
    import ipaddress
    import re

    if address in ("local", "auto"):
        return None
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", rest)  # [IPv6]:port
    host, _, port = (bracketed.group(1), None, bracketed.group(2)) if bracketed else rest.rpartition(":")

    def refused(why: str) -> RunRefused:
        return RunRefused(f"ray.address={address} is not an address Ray can join ({why}): use {ADDRESS_FORMS}")

    if not host or not port.isdigit():
        raise refused("expected <host>:<port>")
    if not 1 <= int(port) <= 65535:
        raise refused(f"port {port} is outside 1-65535")
    if bracketed or re.fullmatch(r"[0-9.]+", host):  # numeric: must be a real IPv4 (IPv6 in brackets)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise refused(f"'{host}' is not an IP address") from None
    elif not re.fullmatch(
        r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        host,
    ):
        raise refused(f"'{host}' is not a host name")
    return host, int(port)


def reach_head(address: str) -> None:
    """A TCP connection to the head's GCS port, bounded in time: nothing listening, a name that does not resolve
    or a host that does not answer is refused here in seconds, instead of Ray retrying for minutes."""
    head = head_of(address)
    if head is None:
        return
    host, port = head
    addresses = _resolve(address, host, port)
    last = None
    for family, kind, protocol, _, target in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.settimeout(CONNECT_SECONDS)
            try:
                probe.connect(target)
                return
            except socket.timeout:
                last = f"no answer within {CONNECT_SECONDS:.0f}s"
            except OSError as error:
                last = (
                    "nothing listens there (connection refused)"
                    if isinstance(error, ConnectionRefusedError)
                    else (error.strerror or str(error))
                )
    raise RunRefused(
        f"cannot join the Ray cluster at ray.address={address}: tried a TCP connection to {host}:{port}: "
        f"{last}; start it with `ray start --head --port {port}` or fix ray.address"
    )


def _resolve(address: str, host: str, port: int) -> list:
    """getaddrinfo without its unbounded wait on an unreachable DNS server (it runs in a thread we stop waiting for)."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    lookup = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        return lookup.result(timeout=RESOLVE_SECONDS)
    except concurrent.futures.TimeoutError:
        why = f"looking up '{host}' took over {RESOLVE_SECONDS:.0f}s"
    except socket.gaierror as error:
        why = f"'{host}' does not resolve ({error.strerror})"
    raise RunRefused(f"cannot join the Ray cluster at ray.address={address}: {why}") from None


@contextlib.contextmanager
def joined_cluster(suite, tracking_uri: str):
    """Join (or, for `local`, start) the Ray cluster before anything of the run exists, or refuse in one line;
    left when the block ends. Ray's own lines (C++ "Failed to connect to GCS", its INFO banner) go to a log file,
    never to the terminal."""
    address = suite.ray.address
    reach_head(address)
    import ray

    with _ray_output_to_file() as log:
        try:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,  # each stage writes its own log file beside its stage file
                configure_logging=False,
            )
        except Exception as error:  # an unreachable head, a refused connection: one line naming the address
            raise RunRefused(
                f"cannot join the Ray cluster at ray.address={address}: {_why_not_joined(error, log)}"
            ) from None
    log.unlink(missing_ok=True)  # joined: nothing in it anyone needs
    try:
        if tracking_uri.startswith("sqlite:") and address != "local" and not _every_node_is_this_machine(ray):
            raise RunRefused(
                f"a Ray cluster with other nodes cannot share the SQLite store '{tracking_uri}': start an MLflow "
                "tracking server and pass tracking.uri=http://<host>:<port> (README, 'On a cluster')"
            )
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _ray_output_to_file():
    """This process's stderr (file descriptor 2, where Ray's C++ core logs) and Ray's Python loggers into a
    temporary file for as long as the block runs; yields the file's path."""
    import sys
    import tempfile

    handle = tempfile.NamedTemporaryFile("w+", prefix="harness-ray-init-", suffix=".log", delete=False)
    sys.stderr.flush()
    saved = os.dup(2)
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.CRITICAL)
    os.dup2(handle.fileno(), 2)
    try:
        yield Path(handle.name)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        handle.close()
        ray_logger.setLevel(level)


def _why_not_joined(error: BaseException, log: Path) -> str:
    """Ray's reason in a few words; a missing or wrong token is only said in its C++ log lines."""
    try:
        said = log.read_text(errors="replace")
    except OSError:
        said = ""
    if "InvalidAuthToken" in said or "InvalidAuthToken" in str(error) or "auth" in type(error).__name__.lower():
        log.unlink(missing_ok=True)  # the reason is all it said
        return (
            "the cluster requires an authentication token this run does not have: set RAY_AUTH_TOKEN (or put it "
            "in ~/.ray/auth_token) with RAY_AUTH_MODE=token"
        )
    return f"{one_line(error)} (Ray's log: {log})"


def run_on_ray(stages: list[Stage], files: dict[str, Path], reporter, suite, tracker) -> dict[str, dict]:
    """The stages on the cluster `joined_cluster` joined (this process is Ray's driver)."""
    import ray

    if not ray.is_initialized():  # the pipeline joins before it creates anything; a caller that did not is a bug
        raise RuntimeError("run_on_ray needs the cluster joined first (harness.executors.ray_cluster.joined_cluster)")
    return run_stages(stages, StageActors(ray, stages, files, reporter, suite, tracker), reporter)


class StageWorker:
    """A Ray actor: one long-lived worker process that runs stage after stage, its imports kept between them."""

    def execute(self, path: str) -> dict:
        return execute(Path(path))


class StageActors:
    """The Ray pool (scheduler.Pool): up to executor.max_parallel StageWorker actors, each asking for the CPUs,
    GPUs and memory of one stage. A stage goes to an idle actor with as many GPUs as it asks for; else a new
    actor is made (an idle one of another shape retired to make room). An actor whose stage failed is retired;
    one that died (killed, out of memory, node lost) takes its stage with it, which starts again on a new actor
    `executor.retries` times and resumes in the same MLflow run, then fails alone."""

    def __init__(self, ray, stages: list[Stage], files: dict[str, Path], reporter, suite, tracker):
        executor = suite.executor
        self.ray, self.files, self.reporter, self.tracker = ray, files, reporter, tracker
        self.retries = executor.retries
        resources = ray.cluster_resources()
        self.cluster_gpus = int(resources.get("GPU", 0))
        per_stage = max(stage.gpus for stage in stages)  # as the plan asked: one GPU a stage on a CUDA suite
        self.size = executor.workers(self.cluster_gpus // per_stage if per_stage else 0, int(resources.get("CPU", 1)))
        self.actor_class = ray.remote(StageWorker)
        self.options = {
            "num_cpus": executor.cpus_per_stage or 1,
            "memory": int(executor.memory_gb * 2**30) or None,
            # The store answered this command: a stage that starts during an outage waits for it like the rest.
            "runtime_env": {"env_vars": {ANSWERED_ENV: os.environ[ANSWERED_ENV]}}
            if ANSWERED_ENV in os.environ
            else None,
        }
        self.idle: list[tuple[object, int]] = []  # (actor, its GPUs)
        self.busy: dict[object, tuple[object, int, Stage, int]] = {}  # reference -> (actor, GPUs, stage, attempt)

    def refusal(self, stage: Stage) -> str | None:
        if stage.gpus > self.cluster_gpus:
            return f"{stage.id} asks for {stage.gpus} GPU(s) and the Ray cluster has {self.cluster_gpus}"
        return None

    def start(self, stage: Stage) -> bool:
        actor = self._actor_for(stage.gpus)
        if actor is None:
            return False
        self._submit(actor, stage, 0)
        self.reporter.stage(stage.label, "start", f"(on Ray; log: {log_path(self.files[stage.id])})")
        return True

    def running(self) -> int:
        return len(self.busy)

    def finished(self, timeout: float) -> list[tuple[Stage, dict]]:
        if not self.busy:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.busy), num_returns=len(self.busy), timeout=timeout)
        done = []
        for reference in ready:
            actor, gpus, stage, attempt = self.busy.pop(reference)
            try:
                result = self.ray.get(reference)
            except Exception as error:  # the actor died: its process, its node, or out of memory
                self.ray.kill(actor)
                if attempt < self.retries:
                    self.reporter.stage(
                        stage.label, "info", f"its Ray worker died ({one_line(error)}); starting it again"
                    )
                    self._submit(self._actor_for(gpus), stage, attempt + 1)
                    continue
                result = outcome(stage, FAILED, failure=f"its Ray worker ended: {one_line(error)}")
                close_cell_run(stage, self.tracker, result["failure"])
            else:
                if result["status"] == FAILED:  # never reuse a process a failure may have left in a bad state
                    self.ray.kill(actor)
                else:
                    self.idle.append((actor, gpus))
            done.append((stage, result))
        return done

    def stop(self, interrupted: bool) -> None:
        for actor, _, stage, _ in self.busy.values():  # only when interrupted: else nothing is busy
            self.ray.kill(actor)
            close_cell_run(stage, self.tracker, "interrupted", status="KILLED")
        for actor, _ in self.idle:
            self.ray.kill(actor)
        self.busy, self.idle = {}, []

    def _actor_for(self, gpus: int):
        for index, (_, its_gpus) in enumerate(self.idle):
            if its_gpus == gpus:
                return self.idle.pop(index)[0]
        if len(self.idle) + len(self.busy) >= self.size:
            if not self.idle:
                return None
            self.ray.kill(self.idle.pop(0)[0])
        return self.actor_class.options(num_gpus=gpus, **self.options).remote()

    def _submit(self, actor, stage: Stage, attempt: int) -> None:
        reference = actor.execute.remote(str(self.files[stage.id]))
        self.busy[reference] = (actor, stage.gpus, stage, attempt)


def _every_node_is_this_machine(ray) -> bool:
    """Every live node of the cluster has one of this machine's addresses (any interface's, not only the one
    the host name resolves to: Ray picks the address of the default route)."""
    import psutil  # Ray's own dependency

    local = {"localhost", socket.gethostname()}
    local |= {address.address for addresses in psutil.net_if_addrs().values() for address in addresses}
    return all(node["NodeManagerAddress"] in local for node in ray.nodes() if node.get("Alive"))
