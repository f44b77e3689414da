"""The Ray executor: every stage a Ray task asking for its CPUs, GPUs and memory; Ray starts a task when the
tasks it waits on have returned (their outcomes are its arguments), on whichever node has room.

- `ray.address=local` starts a Ray instance on this machine for the run; `auto` joins the cluster `ray start`
  made this machine part of; `<host>:<port>` joins that cluster's head.
- Each task runs `harness.stages.runner.execute` on the stage file in a fresh worker process (`max_calls=1`: the
  worker exits afterwards, so a stage's GPU memory is gone before the next stage on that GPU starts).
- A stage that fails by itself returns a failed outcome and is never retried; a worker that dies (killed, out
  of memory, node lost) is retried `executor.retries` times by Ray, and the new attempt resumes the stage in
  the same MLflow run. When none is left, that stage fails alone: its cell's run is marked FAILED, the other
  cells go on.
- Ctrl-C (or SIGTERM) cancels every unfinished task; the rerun resumes.
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
from pathlib import Path

from harness import record
from harness.executors import report_finished, settled_without_running, waits
from harness.plan import EVALUATE, TRAIN, Stage
from harness.runs import RunRefused, read_json
from harness.stages.outcomes import BLOCKED, FAILED, one_line, outcome
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
    return _run(ray, stages, files, reporter, suite, tracker)


def _run(ray, stages, files, reporter, suite, tracker) -> dict[str, dict]:
    executor = suite.executor
    task = ray.remote(max_calls=1)(_stage_task)
    references: dict[str, object] = {}
    outcomes: dict[str, dict] = {}
    for stage in stages:
        known = {dependency: outcomes[dependency] for dependency in waits(stage) if dependency in outcomes}
        if len(known) == len(waits(stage)):  # everything it waits on was settled without Ray: settle it too
            settled = settled_without_running(stage, outcomes, reporter)
            if settled:
                outcomes[stage.id] = settled
                continue
        pending = [dependency for dependency in waits(stage) if dependency in references]
        references[stage.id] = task.options(
            name=stage.id,
            num_cpus=executor.cpus_per_stage or 1,
            num_gpus=stage.gpus,
            memory=int(executor.memory_gb * 2**30) or None,
            max_retries=executor.retries,
            # The store answered this command: a stage that starts during an outage waits for it like the rest.
            runtime_env={"env_vars": {ANSWERED_ENV: os.environ[ANSWERED_ENV]}} if ANSWERED_ENV in os.environ else None,
            retry_exceptions=False,  # a stage's own failure is an outcome, never an exception: only deaths retry
        ).remote(str(files[stage.id]), stage.waits_on, known, pending, *(references[d] for d in pending))
        reporter.stage(stage.label, "start", "(queued on Ray)")

    by_id = {stage.id: stage for stage in stages}
    unfinished = {reference: stage_id for stage_id, reference in references.items()}
    try:
        while unfinished:
            ready, _ = ray.wait(list(unfinished), num_returns=1)
            for reference in ready:
                stage = by_id[unfinished.pop(reference)]
                try:
                    result = ray.get(reference)
                except Exception as error:  # the worker died and no retry was left, or a dependency's did
                    result = outcome(stage, FAILED, failure=f"its Ray task ended: {one_line(error)}")
                    _close_cell_run(stage, tracker, result["failure"])
                outcomes[stage.id] = result
                report_finished(reporter, stage, result)
    except KeyboardInterrupt:
        for reference in unfinished:
            ray.cancel(reference, force=True)
        for stage_id in unfinished.values():
            _close_cell_run(by_id[stage_id], tracker, "interrupted", status="KILLED")
        raise
    return outcomes


def _stage_task(path: str, hard: list[str], known: dict[str, dict], pending: list[str], *results: dict) -> dict:
    """Runs on a Ray worker: the stage, unless something it needs did not complete."""

    outcomes = {**known, **dict(zip(pending, results))}
    failed = [dependency for dependency in hard if outcomes[dependency]["status"] in (FAILED, BLOCKED)]
    if failed:
        stage = Stage(**read_json(Path(path))["stage"])
        return outcome(stage, BLOCKED, failure=f"not started: {failed[0]} did not complete")
    return execute(Path(path))


def _close_cell_run(stage: Stage, tracker, reason: str, status: str = "FAILED") -> None:
    """A cell whose worker died left its MLflow run RUNNING: end it, so nothing stays RUNNING; the rerun
    reopens the same run (its id is in the cell folder) instead of creating a second one."""

    if stage.kind not in (TRAIN, EVALUATE):
        return
    cell_folder = Path(stage.folder).parent if stage.kind == TRAIN else Path(stage.folder)
    id_file = cell_folder / "mlflow_run_id"
    if not id_file.is_file():
        return
    run_id = id_file.read_text().strip()
    try:
        if tracker.client.get_run(run_id).info.status != "RUNNING":
            return
        state = record.STATUS_KILLED if status == "KILLED" else record.STATUS_FAILED
        tracker.set_tags(run_id, {record.TAG_STATUS: state, record.TAG_FAILURE: reason[:4000]})
        tracker.finish(run_id, status)
    except Exception:  # the tracking store is the stage's problem to report, not this bookkeeping's
        logger.warning("could not close the MLflow run of %s", stage.id, exc_info=True)


def _every_node_is_this_machine(ray) -> bool:
    """Every live node of the cluster has one of this machine's addresses (any interface's, not only the one
    the host name resolves to: Ray picks the address of the default route)."""
    import psutil  # Ray's own dependency

    local = {"localhost", socket.gethostname()}
    local |= {address.address for addresses in psutil.net_if_addrs().values() for address in addresses}
    return all(node["NodeManagerAddress"] in local for node in ray.nodes() if node.get("Alive"))
