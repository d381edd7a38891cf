"""Keep secrets out of what leaves the machine: the values to hide, and text and specs without them."""

import os
import re
from typing import Any

# A name that ends in a secret word: HF_TOKEN, hf_token, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, client_secret; not
# num_tokens, tokenizer or laq_token_ablation (a word inside a name describes it, the last word says what it holds).
SECRET_NAME = re.compile(
    r"(^|[_-])(token|secret|password|passwd|credentials?|(api|access|private|secret)[_-]key)$", re.IGNORECASE
)
MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would mask innocent text
MASK = "***"
MAX_ERROR_LENGTH = 300
HTTP_STATUS_HELP = "For more information check:"  # httpx's line pointing at MDN's page on the status code


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


def error_line(err: BaseException, secrets: list[str], limit: int = MAX_ERROR_LENGTH) -> str:
    """``Type: message`` of ``err`` on one line, secret values masked, cut at ``limit`` characters: for an
    error message that names what failed underneath (a Hub response may span lines or echo a request)."""
    lines = [line for line in str(err).splitlines() if not line.startswith(HTTP_STATUS_HELP)]
    message = " ".join(scrub_text("\n".join(lines), secrets).split())
    line = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def mask_secret_keys(node: Any) -> Any:
    """A copy of a JSON value with the value of every key named like a secret (``hf_token``) masked."""
    if isinstance(node, dict):
        return {k: MASK if is_secret_name(k) else mask_secret_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_secret_keys(v) for v in node]
    return node


def mask_spec_file(specs: dict[str, dict]) -> dict[str, dict]:
    """A copy of a spec file's ``{spec_name: spec}`` with secret-named values inside each spec's sections masked
    (``meta.variables.wandb_api_key``, ``model.x.hf_token``); spec names and section names (``stage``, ``data``,
    ...) are kept whatever they are called, so a spec named ``rt_secret`` is saved whole."""
    return {name: mask_spec(spec) for name, spec in specs.items()}


def mask_spec(spec: Any) -> Any:
    """One spec with the values of secret-named keys below its top-level sections masked."""
    if not isinstance(spec, dict):
        return spec
    return {section: mask_secret_keys(value) for section, value in spec.items()}


def holds_secret(data: bytes, secrets: list[str]) -> bool:
    return any(secret.encode() in data for secret in secrets)
