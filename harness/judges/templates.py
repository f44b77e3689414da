"""Judge prompt templates: configs/judges/<name>.yaml (or a path to such a file), read, checked and rendered.

A template is
    description: one line (optional)
    system: the system message (optional; "" or absent = none)
    user: the user message, with the placeholders {prompt}, {first} and {second}
    answers: [A, B]   # the judge's label for "the first answer is better", then for "the second"

Rendering fills the three placeholders in one pass, so a prompt or an answer that itself contains "{second}"
stays as written. Any other "{name}" is refused when the file is read: it is a misspelt placeholder that
would otherwise reach the judge verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.config import JUDGES_DIR
from harness.errors import ConfigError, shown

PLACEHOLDERS = ("prompt", "first", "second")
KEYS = ("description", "system", "user", "answers")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class JudgeTemplate:
    name: str  # the template's name or the path it was read from, for messages
    description: str
    system: str
    user: str
    answers: tuple[str, str]  # (label: first answer better, label: second answer better)

    def messages(self, prompt: str, first: str, second: str) -> list[dict]:
        """The comparison as chat messages: the system message when there is one, then the user message."""
        values = {"prompt": prompt, "first": first, "second": second}
        user = _PLACEHOLDER.sub(lambda match: values[match.group(1)], self.user)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]


def template_file(name_or_path: str) -> Path:
    """configs/judges/<name>.yaml for a known name, else the path itself."""
    named = JUDGES_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and named.is_file():
        return named
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in JUDGES_DIR.glob("*.yaml")))
        raise ConfigError(f"judge template '{shown(name_or_path)}' is neither a known template ({known}) nor a file")
    return path


def load_template(name_or_path: str) -> JudgeTemplate:
    """Read and check a template; a problem is a one-line ConfigError naming the file."""
    import yaml

    path = template_file(name_or_path)
    where = f"judge template {shown(str(path), 200)}"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ConfigError(f"{where} cannot be read: {first_line}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(str(key) for key in data if key not in KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; a template has {', '.join(KEYS)}")
    for key in ("description", "system", "user"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{where}: '{key}' must be text")
    user, system = data.get("user") or "", data.get("system") or ""
    if not user.strip():
        raise ConfigError(f"{where} has no 'user' message")
    found = _PLACEHOLDER.findall(user)
    missing = [name for name in PLACEHOLDERS if name not in found]
    if missing:
        raise ConfigError(f"{where}: 'user' lacks the placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    strangers = sorted({name for name in found if name not in PLACEHOLDERS})
    if strangers:
        raise ConfigError(
            f"{where}: 'user' has unknown placeholder(s) {', '.join('{' + s + '}' for s in strangers)}; "
            f"only {{prompt}}, {{first}} and {{second}} are filled"
        )
    if _PLACEHOLDER.search(system):
        raise ConfigError(f"{where}: 'system' has a placeholder; only 'user' is filled in")
    return JudgeTemplate(
        name=name_or_path,
        description=(data.get("description") or "").strip(),
        system=system.strip(),
        user=user,
        answers=_answers(data.get("answers"), where),
    )


def _answers(answers, where: str) -> tuple[str, str]:
    valid = (
        isinstance(answers, list)
        and len(answers) == 2
        and all(isinstance(label, str | int) and str(label).strip() for label in answers)
    )
    if not valid:
        raise ConfigError(f"{where}: 'answers' must be two non-empty labels such as [A, B], got {shown(answers)}")
    first, second = (str(label).strip() for label in answers)
    if first == second:
        raise ConfigError(f"{where}: 'answers' must be two distinct labels, got {first!r} twice")
    return first, second


def prompt_token_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The judge's input up to where it answers: the tokenizer's chat template with its generation prompt, or,
    for a tokenizer without one, the plain text "system\\n\\nuser\\n" with the tokenizer's own special tokens.

    A chat template writes whatever BOS the model expects itself, so its text is encoded without adding
    special tokens again (the convention of vLLM's chat entry point)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n\n".join(message["content"] for message in messages) + "\n"
    return tokenizer(text)["input_ids"]
