"""What of the params goes to MLflow: flattened with dots, secrets dropped, long values cut.

Why: the parent run of an execution holds every leaf of the params file and each stage run the
sections its stage reads; secrets never go, not by name (`api_key`, `password`, `*token`, ...),
not by value (the value of the variable named by `llm.api_key_env`, or of any secret-looking
environment variable), and URLs only redacted (lfp.core.secrets).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lfp.core.secrets import redact, url_secrets
from lfp.core.tracking_store import log_artifact_to, tracking_uri

# MLflow's limits (mlflow.utils.validation): a param value, a tag value, a key.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_ARTIFACT = "params/params.json"  # the full value of every param too long for MLflow
# Environment variables that hold keys whatever params say (plus the one `llm.api_key_env` names).
KNOWN_KEY_ENVS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN",
                  "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
_SECRET_WORDS = ("secret", "password", "passwd", "passphrase", "authorization", "credential", "apikey",
                 "api_key", "private_key", "access_key", "bearer")
MIN_SECRET_LEN = 8  # shorter values ("1", "true") of secret-looking variables are not keys
_BAD_KEY_CHARS = re.compile(r"[^\w.\- :]")  # MLflow accepts [/\w.\- :]; '/' can make two keys alias


def current_params_file() -> Path:
    """The params file of this execution: $LFP_PARAMS or ./params.yaml (what `pipeline_id` hashes)."""
    return Path(os.environ.get("LFP_PARAMS") or "params.yaml")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a (possibly nested) metrics mapping, flattened."""
    out = {}
    for key, value in flatten(metrics).items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def is_secret_name(name: str) -> bool:
    """True for a param (or environment variable) name that holds a credential.

    By what the name says, not by substring: `llm.api_key`, `hf_token`, `access_token`, `secret`,
    `db.password`, `authorization` are secrets; `max_new_tokens`, `context_tokens`,
    `tokenizer_texts` are not. A part ending in `_env` (`llm.api_key_env`) names an environment
    variable and is not itself a secret; its variable's value is (see `secret_values`).
    """
    for part in name.lower().replace("-", "_").split("."):
        if part.endswith("_env"):
            continue
        words = part.split("_")
        if part in ("key", "auth") or part.endswith("token") or "auth" in words:
            return True
        if any(word in part for word in _SECRET_WORDS):
            return True
    return False



def secret_values(*flat_params: Mapping[str, Any]) -> set[str]:
    """Values that must never be logged: those of KNOWN_KEY_ENVS, of every environment variable
    named by a `*_env` param (e.g. `llm.api_key_env`), and of every secret-looking variable."""
    names = set(KNOWN_KEY_ENVS)
    for flat in flat_params:
        names.update(str(v) for k, v in flat.items() if k.lower().endswith("_env") and isinstance(v, str) and v)
    names.update(k for k in os.environ if is_secret_name(k))
    values = {os.environ.get(n, "").strip() for n in names}
    return {v for v in values if len(v) >= MIN_SECRET_LEN} | set(url_secrets(tracking_uri()))


def param_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY]


def clean_params(flat: Mapping[str, Any], secrets: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(params fit for MLflow, full values of the ones cut to MAX_PARAM_VALUE).

    Drops secret names and values equal to a secret; redacts URLs and secrets inside other values;
    a value longer than MLflow's cap (a long list) is cut, with a pointer to PARAMS_ARTIFACT.
    """
    out: dict[str, str] = {}
    full: dict[str, str] = {}
    for key, value in flat.items():
        text = str(value)
        if is_secret_name(key) or text.strip() in secrets:
            continue
        text = redact(text, secrets)
        name = param_key(key)
        if len(text) > MAX_PARAM_VALUE:
            full[name] = text
            note = f" ...[{len(text)} chars; full value in artifact {PARAMS_ARTIFACT}]"
            text = text[: MAX_PARAM_VALUE - len(note)] + note
        out[name] = text
    return out, full


def log_full_values(client: Any, run_id: str, full: Mapping[str, str]) -> None:
    """The untruncated values of cut params, as a JSON artifact of the run."""
    if not full:
        return
    with tempfile.TemporaryDirectory(prefix="lfp-params-") as tmp:
        path = Path(tmp) / Path(PARAMS_ARTIFACT).name
        path.write_text(json.dumps(dict(full), indent=2, sort_keys=True), encoding="utf-8")
        log_artifact_to(client, run_id, path, str(Path(PARAMS_ARTIFACT).parent))


def read_params_file(path: Path | None = None) -> dict[str, Any]:
    """The params file as plain data ({} when missing or unreadable: the CLI validated it already)."""
    import yaml

    p = path or current_params_file()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
