"""Before a run trains anything: an OpenAI-compatible judge must have its key and answer, or the run is refused
in one line (a judge that fails only at the first evaluation would waste every cell's training)."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

from harness.errors import ConfigError
from harness.secrets import looks_like_secret, redact

logger = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_SECONDS = 10.0


def check_judge_endpoint(judge) -> None:
    """judge: harness.config.JudgeConfig. GET {base_url}/models, the cheapest call every OpenAI-compatible server
    (vLLM's, OpenAI's) answers; its status, never the key, goes into the error."""
    if judge.kind != "model" or judge.backend != "openai":
        return
    headers = {}
    if judge.api_key_env:
        key = os.environ.get(judge.api_key_env)
        if not key:
            if looks_like_secret(judge.api_key_env):  # a key pasted where its variable's name belongs: never echoed
                raise ConfigError(
                    "'judge.api_key_env' holds what looks like an API key, not the name of an environment "
                    "variable: export the key (e.g. as OPENAI_API_KEY) and pass that name"
                )
            raise ConfigError(
                f"'judge.api_key_env' names {judge.api_key_env}, which is not set in the environment: "
                f"export the judge's API key as {judge.api_key_env}"
            )
        headers["Authorization"] = f"Bearer {key}"
    url = judge.base_url.rstrip("/") + "/models"
    shown_url = redact(url)  # a URL may carry credentials (user:password@host, ?api_key=...)
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=PREFLIGHT_TIMEOUT_SECONDS) as response:
            json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise ConfigError(
            f"judge endpoint {shown_url} answered HTTP {error.code} ({error.reason}); check judge.base_url and the key"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"judge endpoint {shown_url} is unreachable ({redact(str(reason))}); start the server or fix judge.base_url"
        ) from None
