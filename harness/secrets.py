"""Secret-looking values kept out of everything the harness writes for people to read: errors, log lines,
MLflow params and tags (and so the reports made from them).

One function, `redact`, replaces them wherever such text is produced; `looks_like_secret` says whether a single
value (a setting that should name something, e.g. `judge.api_key_env`) is one, so that a message can say what is
wrong without repeating it. What counts as a secret:

- an API key in a known shape: OpenAI/Anthropic `sk-...`, Hugging Face `hf_...`, GitHub `ghp_...`/`github_pat_...`,
  AWS `AKIA...`, Slack `xox?-...`, a JWT (`eyJ...`), and whatever follows `Bearer `;
- a URI's password (`scheme://user:password@host`) and the value of a query parameter named like a credential
  (`?token=`, `&password=`, `api_key=`...);
- a long single token that mixes upper case, lower case and digits (a key pasted where a name belongs);
  environment variable names (upper case) and hashes (hex, lower case) are not that.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"

_KEY_SHAPES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{8,}"  # OpenAI, Anthropic (sk-ant-...), sk-live-...
    r"|hf_[A-Za-z0-9]{16,}"  # Hugging Face
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"  # a JWT
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\"]+")
_URI_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s@/'\"]+(@)")
_CREDENTIAL_PARAMETER = re.compile(
    r"(?i)([?&;]\s*(?:[a-z_\-]*(?:token|password|passwd|secret|api[_\-]?key|access[_\-]?key|sig|signature))=)[^&\s'\"]+"
)
# Base64-ish runs only: names with dots and dashes ("TinyLlama-1.1B-Chat-v1.0") are models, not keys.
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_+/=.\-])[A-Za-z0-9_+=]{24,}(?![A-Za-z0-9_+/=.\-])")


def _mixed_token(token: str) -> bool:
    """A long run of characters with upper case, lower case and digits in it: how random keys look."""
    return (
        sum(c.isupper() for c in token) >= 2
        and sum(c.islower() for c in token) >= 2
        and sum(c.isdigit() for c in token) >= 2
    )


def looks_like_secret(value: str) -> bool:
    """Whether one value is, or holds, something `redact` would hide."""
    text = str(value)
    return redact(text) != text


def redact(text: str) -> str:
    """`text` with every secret-looking part replaced by *** (a URI keeps its user and host, a query parameter its name)."""
    text = str(text)
    text = _KEY_SHAPES.sub(HIDDEN, text)
    text = _BEARER.sub(lambda match: match.group(1) + HIDDEN, text)
    text = _URI_PASSWORD.sub(lambda match: match.group(1) + HIDDEN + match.group(2), text)
    text = _CREDENTIAL_PARAMETER.sub(lambda match: match.group(1) + HIDDEN, text)
    return _LONG_TOKEN.sub(lambda match: HIDDEN if _mixed_token(match.group(0)) else match.group(0), text)


class RedactingFilter(logging.Filter):
    """On a handler: every record it writes (the harness's and the libraries' it calls) with its secrets hidden."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and record.exc_info[1] is not None:  # a traceback's last line repeats the message
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
