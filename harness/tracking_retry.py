"""The tracking store's faults, survived: an `MlflowClient` whose calls ride out an outage and a busy SQLite file.

Shared infrastructure fails in two ways a run must live through (issue 15):

- a tracking server that stops (a deploy, a crash) and comes back later: every call that fails with a
  transient error (connection refused or reset, a timeout, HTTP 502/503/504, "database is locked") is retried
  with backoff until the store answers again or `tracking.retry_seconds` have passed since it stopped
  answering; then `TrackingError`, one line naming the URI. Training blocks on its next metric while the store
  is away, so nothing is lost: the metric is sent when the store is back. Once one call has given up, the
  process's later calls to that URI fail at once (no second window) unless the store answers again, so a
  command whose store never comes back ends in about one window, with every completed stage kept on disk;
- several `harness run` commands writing to one SQLite file: the first use of a fresh file creates MLflow's
  tables, which two processes must not do at once ("duplicate column name" from the second one's migration),
  (and an interrupted migration leaves the file unusable), so creating the client holds a file lock beside the
  database; two commands of one suite creating its experiment at once share the one that won; writes that still
  meet a lock held longer than MLflow's own busy timeout (20 s) are retried like an outage.

A store that cannot be reached when a command starts is refused at once, as before: retries begin only once
this client has had an answer, so a wrong URI is not waited on for minutes.

Retried writes must not be doubled: metrics, tags, params and statuses are idempotent in MLflow (a metric sent
twice is stored once), and a `create_run` whose answer was lost looks for the run it may have created
before it asks again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from harness.secrets import redact

logger = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = 300.0
FIRST_WAIT_SECONDS = 0.5
LONGEST_WAIT_SECONDS = 10.0

# URIs a call of this process gave up on (URI -> when): later calls try once instead of waiting again.
_given_up: dict[str, float] = {}
_lock = threading.Lock()
# The URI that has answered this command: set by the first answer, inherited by the stage subprocesses, so a stage
# that starts while the store is away waits for it instead of being refused like a wrong URI.
ANSWERED_ENV = "HARNESS_TRACKING_ANSWERED"

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED"}
_TRANSIENT_TEXT = (
    "database is locked",
    "database table is locked",
    "failed with exception",  # rest_utils: connection refused / reset / aborted (requests' error)
    "failed with timeout exception",
    "failed with error code 502",
    "failed with error code 503",
    "failed with error code 504",
    "connection refused",
    "connection reset",
    "connection aborted",
    "remote end closed connection",
    "max retries exceeded",
)


def is_transient(error: BaseException) -> bool:
    """An error that says "not now" rather than "never": the store is away, restarting, or busy."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "error_code", None)
        if isinstance(code, str) and code in _TRANSIENT_CODES:
            return True
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        try:
            import requests

            if isinstance(current, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
                return True
        except ImportError:  # pragma: no cover - requests comes with MLflow
            pass
        text = str(current).lower()
        if any(marker in text for marker in _TRANSIENT_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def error_code(error: BaseException) -> str | None:
    code = getattr(error, "error_code", None)
    return code if isinstance(code, str) else None


def first_line(error: BaseException) -> str:
    """The reason in a few words: MLflow's connection errors carry a whole urllib3 repr."""
    text = str(error).strip()
    lowered = text.lower()
    for marker, reason in (
        ("connection refused", "connection refused"),
        ("timeout", "timed out"),
        ("connection reset", "connection reset"),
        ("connection aborted", "connection aborted"),
        ("remote end closed", "connection closed"),
        ("database is locked", "database is locked"),
    ):
        if marker in lowered:
            return reason
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


@contextlib.contextmanager
def sqlite_init_lock(uri: str):
    """Hold an exclusive lock beside a SQLite store while MLflow creates (or checks) its tables; nothing for
    other stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri[len("sqlite:///") :].split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RetryingClient:
    """`mlflow.MlflowClient(uri)` with every call retried through a store outage (see the module's doc).

    `harness.tracking.Tracker` uses it in place of `mlflow.MlflowClient`; giving up raises its `TrackingError`.
    """

    def __init__(self, uri: str, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        import mlflow

        self.uri = uri
        self.retry_seconds = float(retry_seconds)
        with sqlite_init_lock(uri):  # a fresh SQLite file gets its tables from one process at a time
            self._client = mlflow.MlflowClient(tracking_uri=uri)
        if uri.startswith("sqlite:///"):
            _mark_answered(uri)  # the file is there with its tables: a later "locked" is worth waiting for

    @property
    def raw(self):
        """The MlflowClient itself: one attempt per call, for calls whose failure is harmless (a heartbeat)."""
        return self._client

    # -- the calls ---------------------------------------------------------------------------------------------

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            return self.call(name, attribute, *args, **kwargs)

        return call

    def create_experiment(self, name: str, *args, **kwargs) -> str:
        """Two commands of one suite may create its experiment at once: the second one uses the first's."""
        try:
            return self.call("create_experiment", self._client.create_experiment, name, *args, **kwargs)
        except Exception as error:
            if error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self.call("get_experiment_by_name", self._client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id

    def create_run(self, experiment_id: str, *args, run_name: str | None = None, tags: dict | None = None, **kwargs):
        """A run created once: when an attempt's answer was lost (the server went down mid-request, or
        answered after the timeout), the run it may have made is looked for before asking again."""
        started_ms = int(time.time() * 1000) - 1000
        attempts = {"count": 0}

        def create(*call_args, **call_kwargs):
            attempts["count"] += 1
            if attempts["count"] > 1:
                earlier = self._created_since(experiment_id, run_name, tags or {}, started_ms)
                if earlier is not None:
                    logger.warning(
                        "MLflow run %s was created by an attempt whose answer was lost; using it", earlier.info.run_id
                    )
                    return earlier
            return self._client.create_run(*call_args, **call_kwargs)

        return self.call("create_run", create, experiment_id, *args, run_name=run_name, tags=tags, **kwargs)

    def _created_since(self, experiment_id: str, run_name: str | None, tags: dict, started_ms: int):
        if not run_name:
            return None
        name = run_name.replace("'", "\\'")
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name = '{name}' and attributes.start_time >= {started_ms}"
        )
        for run in runs:
            if all(run.data.tags.get(key) == str(value) for key, value in tags.items()):
                return run
        return None

    # -- retrying ----------------------------------------------------------------------------------------------

    def call(self, what: str, function, *args, **kwargs):
        """`function(*args, **kwargs)`, retried while the store is away, for at most the retry window."""
        return call_retried(self.uri, self.retry_seconds, what, function, *args, **kwargs)


def call_retried(uri: str, retry_seconds: float, what: str, function, *args, **kwargs):
    """`function(*args, **kwargs)`, which talks to the store at `uri`, retried while that store is away for at
    most `retry_seconds`: every client call, and whole reads made with another client (the end-of-run report's)."""
    down_since = None
    wait = FIRST_WAIT_SECONDS
    while True:
        try:
            result = function(*args, **kwargs)
        except Exception as error:
            # No retries before the store has answered this command once: a wrong URI is refused at once.
            if not (os.environ.get(ANSWERED_ENV) == uri and is_transient(error)):
                raise
            now = time.monotonic()
            with _lock:
                gave_up_earlier = uri in _given_up
            if down_since is None:
                down_since = now
                if not gave_up_earlier:
                    logger.warning(
                        "MLflow tracking URI '%s' did not answer (%s): %s; retrying for up to %.0fs "
                        "(tracking.retry_seconds)",
                        redact(uri),
                        what,
                        first_line(error),
                        retry_seconds,
                    )
            remaining = retry_seconds - (now - down_since)
            if gave_up_earlier or remaining <= 0:
                with _lock:
                    _given_up.setdefault(uri, now)
                from harness.tracking import TrackingError

                raise TrackingError(
                    f"MLflow tracking URI '{redact(uri)}' stopped answering and did not come back within "
                    f"{retry_seconds:.0f}s (tracking.retry_seconds): {first_line(error)}; completed stages are "
                    "kept, rerun the same command once the store is back"
                ) from None
            time.sleep(min(wait, remaining))  # the last attempt comes when the window ends
            wait = min(wait * 2, LONGEST_WAIT_SECONDS)
            continue
        if down_since is not None:
            logger.warning(
                "MLflow tracking URI '%s' answers again after %.0fs", redact(uri), time.monotonic() - down_since
            )
        _mark_answered(uri)
        with _lock:
            _given_up.pop(uri, None)
        return result


def _mark_answered(uri: str) -> None:
    os.environ[ANSWERED_ENV] = uri
