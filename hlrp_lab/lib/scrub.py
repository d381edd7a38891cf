"""Keep secrets out of what leaves the machine: the values to hide, and text and specs without them."""

import os
import re
from typing import Any

# Whole words of a name: HF_TOKEN, hf_token, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY; not num_tokens or tokenizer.
SECRET_NAME = re.compile(
    r"(^|[_-])(token|secret|password|passwd|credentials?|(api|access|private)[_-]key)($|[_-])", re.IGNORECASE
)
MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would mask innocent text
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values(extra: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables (and ``extra``, e.g. ``.env``) whose names say they are secret,
    longest first so that a secret containing another is masked whole."""
    variables = {**os.environ, **(extra or {})}
    values = {v for k, v in variables.items() if is_secret_name(k) and v and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def mask_secret_keys(node: Any) -> Any:
    """A copy of a JSON value with the value of every key named like a secret (``hf_token``) masked."""
    if isinstance(node, dict):
        return {k: MASK if is_secret_name(k) else mask_secret_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_secret_keys(v) for v in node]
    return node


def holds_secret(data: bytes, secrets: list[str]) -> bool:
    return any(secret.encode() in data for secret in secrets)
