"""Secrets never echoed (issue 23): the one redaction function, hand-written oracles for what it hides and what it
keeps; the log filter on a real handler; MLflow params and tags on a real SQLite store; the judge preflight's
message for a key pasted where its variable's name belongs."""

from __future__ import annotations

import io
import logging

import pytest

from harness.secrets import RedactingFilter, looks_like_secret, redact

HIDDEN = [
    ("judge.api_key_env=sk-live-4f9aXk2LmQ8rT1vZ", "judge.api_key_env=***"),
    ("key sk-ant-api03-AbCdEf0123456789", "key ***"),
    ("token hf_AbCdEfGhIjKlMnOpQrSt", "token ***"),
    ("ghp_0123456789abcdefABCDEF0123", "***"),
    ("AKIAABCDEFGHIJKLMNOP", "***"),
    ("http://alice:s3cr3t@mlflow.example:5000/api", "http://alice:***@mlflow.example:5000/api"),
    ("postgresql://u:p4ss@db/x", "postgresql://u:***@db/x"),
    ("https://judge/v1?api_key=abc123&model=m", "https://judge/v1?api_key=***&model=m"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
    ("pasted aB3dE5fG7hJ9kL1mN3pQ5rS7tU9 here", "pasted *** here"),
]
KEPT = [
    "OPENAI_API_KEY",
    "http://127.0.0.1:5000",
    "TinyLlama-1.1B-Chat-v1.0",
    "EleutherAI/pythia-1b-deduped",
    "run 0123456789abcdef0123456789abcdef",  # MLflow run ids and config hashes: lower-case hex
    "/work/main/runs/tiny/cells/dpo-s0-ab12CD34ef56GH78ij90KL12/train",
    "sqlite:////tmp/x/runs/mlflow.db",
    "algorithms.dpo.beta=0.1",
]


@pytest.mark.parametrize("text, expected", HIDDEN)
def test_secret_looking_values_are_hidden(text, expected):
    assert redact(text) == expected
    assert looks_like_secret(text)


@pytest.mark.parametrize("text", KEPT)
def test_names_paths_and_hashes_are_kept(text):
    assert redact(text) == text
    assert not looks_like_secret(text)


def test_the_log_filter_hides_secrets_in_messages_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test_secrets.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("store %s did not answer", "http://bob:hunter2x@host:5000")
        try:
            raise ValueError("bad key sk-live-0123456789abcdef")
        except ValueError:
            log.exception("judge failed")
    finally:
        log.removeHandler(handler)
    written = stream.getvalue()
    assert "store http://bob:***@host:5000 did not answer" in written
    assert "ValueError: bad key ***" in written
    assert "hunter2x" not in written and "sk-live-0123456789abcdef" not in written


def test_params_and_tags_reach_mlflow_without_secrets(tmp_path):
    from harness.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    run_id = tracker.start_invocation("tiny", {})
    tracker.log_params(
        run_id,
        {
            "judge.api_key_env": "sk-live-0123456789abcdef",
            "tracking.uri": "http://a:pw9@h:1",
            "algorithms.dpo.beta": 0.1,
        },
    )
    tracker.set_tags(run_id, {"harness.failure": "endpoint https://x/v1?token=abc refused"})
    run = tracker.client.get_run(run_id)
    assert run.data.params == {
        "judge.api_key_env": "***",
        "tracking.uri": "http://a:***@h:1",
        "algorithms.dpo.beta": "0.1",
    }
    assert run.data.tags["harness.failure"] == "endpoint https://x/v1?token=*** refused"


def test_a_key_in_the_variable_field_is_named_but_never_echoed(monkeypatch):
    """Alphanumeric keys pass the config's name check; the preflight must still not print them."""
    from harness.config import JudgeConfig
    from harness.errors import ConfigError
    from harness.judges.preflight import check_judge_endpoint

    key = "Abc123Def456Ghi789Jkl012"
    monkeypatch.delenv(key, raising=False)
    judge = JudgeConfig(kind="model", backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=key)
    with pytest.raises(ConfigError) as refused:
        check_judge_endpoint(judge)
    assert key not in str(refused.value) and "'judge.api_key_env'" in str(refused.value)
