"""judge.backend openai: any OpenAI-compatible chat endpoint (`vllm serve`, a hosted API), stdlib only.

Each judge prompt is one POST {base_url}/chat/completions at temperature 0 asking for every generated token's
top log-probabilities; the verdict is the two labels' renormalised probabilities at the reply's answer token
(the first label token where the reply so far parses as that label: the "B" of "**B**") when both labels are
among its alternatives, else the reply's text, parsed (harness.judges.pairwise.reply_verdict). Up to
judge.batch_size requests are in flight at once. Rate limits and server errors (429, 5xx) and timeouts are
retried with backoff (honouring Retry-After); an endpoint that refuses log-probabilities (400 naming them) is
asked again without. Anything else is a one-line JudgeError naming the URL and the HTTP status.

The API key comes from the environment variable that judge.api_key_env names and travels only in the
Authorization header: it is never logged, and it is cut out of any error text an endpoint sends back.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from harness.judges.base import OrderVerdict
from harness.judges.pairwise import JudgeError, PairwiseJudge, reply_verdict
from harness.judges.templates import JudgeTemplate

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # the most OpenAI's API returns
REQUEST_TIMEOUT_S = 300.0
RETRY_DELAYS_S = (2.0, 4.0, 8.0, 16.0, 32.0)  # after a 429 / 5xx / timeout, unless the server says Retry-After
MAX_RETRY_AFTER_S = 120.0
ERROR_TEXT_LIMIT = 200  # characters of an endpoint's error message kept in ours


class JudgeEndpointError(JudgeError):
    """The endpoint is unreachable or answered with an HTTP error: one line with the URL and status."""


class OpenAIJudge(PairwiseJudge):
    def __init__(
        self,
        base_url: str,
        model: str,
        template: JudgeTemplate,
        batch_size: int,
        max_new_tokens: int,
        api_key_env: str = "",
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.batch_size, self.max_new_tokens = model, template, batch_size, max_new_tokens
        self._api_key = _api_key(api_key_env)
        self.ask_logprobs = True  # False once the endpoint has refused them
        logger.info("openai judge %s at %s, template %s", model, self.url, template.name)

    def judge_orders(self, orders: list[tuple[str, str, str]]) -> list[OrderVerdict]:
        failed = threading.Event()  # the first failure ends the call: no new requests, those in flight finish

        def judge_order(order: tuple[str, str, str]) -> OrderVerdict | None:
            if failed.is_set():
                return None
            try:
                return self._judge_order(order)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=min(self.batch_size, len(orders))) as pool:
            return list(pool.map(judge_order, orders))

    def _judge_order(self, order: tuple[str, str, str]) -> OrderVerdict:
        reply = self._chat(self.template.messages(*order))
        try:
            choice = reply["choices"][0]
            text = (choice["message"].get("content") or "").strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            raise JudgeEndpointError(f"judge endpoint {self.url} sent no chat completion choice") from None
        generated = [entry for entry in (choice.get("logprobs") or {}).get("content") or [] if isinstance(entry, dict)]
        tokens = [str(entry.get("token") or "") for entry in generated]
        return reply_verdict(tokens, [_alternatives(entry) for entry in generated], text, self.template.answers)

    def _chat(self, messages: list[dict]) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_new_tokens}
        if self.ask_logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:  # before URLError, its base class
                detail = self._scrubbed(_error_text(error))
                if error.code == 400 and self.ask_logprobs and "logprob" in detail.lower():
                    logger.warning("%s refuses log-probabilities; judging from the reply text", self.url)
                    self.ask_logprobs = False
                    return self._chat(messages)
                problem, transient = f"answered HTTP {error.code}: {detail}", error.code == 429 or error.code >= 500
                delay = _retry_after(error, delay)
            except urllib.error.URLError as error:
                if not isinstance(error.reason, TimeoutError):  # refused, unknown host: retrying will not help
                    raise JudgeEndpointError(
                        f"judge endpoint {self.url} is unreachable: {self._scrubbed(str(error.reason))}"
                    ) from None
                problem, transient = f"timed out after {REQUEST_TIMEOUT_S:.0f} s", True
            except TimeoutError:
                problem, transient = f"timed out after {REQUEST_TIMEOUT_S:.0f} s", True
            except (ConnectionError, http.client.HTTPException) as error:  # dropped mid-reply
                problem, transient = f"dropped the connection ({type(error).__name__})", True
            else:
                try:
                    return json.loads(payload.decode())
                except ValueError:
                    raise JudgeEndpointError(f"judge endpoint {self.url} sent a reply that is not JSON") from None
            if not transient or attempt == len(RETRY_DELAYS_S):
                raise JudgeEndpointError(f"judge endpoint {self.url} {problem}")
            logger.warning("judge endpoint %s %s; retry %d in %.0f s", self.url, problem, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("the loop returns or raises")

    def _scrubbed(self, text: str) -> str:
        """One line, short, and without the key (some APIs echo a wrong key back in their error)."""
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:ERROR_TEXT_LIMIT] + ("…" if len(text) > ERROR_TEXT_LIMIT else "")


def _alternatives(entry: dict) -> list[tuple[str, float]]:
    """One generated token's top log-probabilities as (token text, log-probability) pairs."""
    return [
        (str(top.get("token") or ""), float(top["logprob"]))
        for top in entry.get("top_logprobs") or []
        if isinstance(top, dict) and isinstance(top.get("logprob"), int | float)
    ]


def _api_key(api_key_env: str) -> str:
    if not api_key_env:
        return ""
    key = os.environ.get(api_key_env, "")
    if not key:
        raise JudgeError(f"judge.api_key_env names the environment variable {api_key_env}, which is not set")
    return key


def _error_text(error: urllib.error.HTTPError) -> str:
    """The endpoint's own message when it sends OpenAI's {"error": {"message": ...}}, else its body or reason."""
    try:
        body = error.read().decode(errors="replace")
    except OSError:
        body = ""
    try:
        message = json.loads(body)["error"]
        message = message.get("message", message) if isinstance(message, dict) else message
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body or str(error.reason)


def _retry_after(error: urllib.error.HTTPError, default: float) -> float:
    """The server's Retry-After in seconds (capped) when it sends one, else our own backoff."""
    try:
        return max(0.0, min(float(error.headers.get("Retry-After", "")), MAX_RETRY_AFTER_S))
    except (AttributeError, TypeError, ValueError):
        return default
