"""A small client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Why one place: the explain and contrastive stages both talk to an LLM; the endpoint, the model,
the retry policy and the rule "the key comes only from the environment and never appears in a
log, an error or MLflow" live here once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from lfp.config import Llm
from lfp.errors import BackendError, ConfigError

ENV_BASE_URL = "LFP_LLM_BASE_URL"
ENV_MODEL = "LFP_LLM_MODEL"
LOCAL_DUMMY_KEY = "not-needed"  # local servers (llama.cpp, vLLM) accept any key
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def resolve_base_url(cfg: Llm) -> str:
    """The endpoint URL: $LFP_LLM_BASE_URL or params `llm.base_url`, checked for scheme and host."""
    url = (os.environ.get(ENV_BASE_URL) or cfg.base_url).strip()
    where = f"${ENV_BASE_URL}" if os.environ.get(ENV_BASE_URL) else "params 'llm.base_url'"
    parts = urlsplit(url)
    if "@" in parts.netloc:  # credentials would end up in logs, tags and error messages: never echo them
        raise ConfigError(f"{where}: credentials in the URL are not allowed; put the key in the variable named by 'llm.api_key_env'")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: '{url}' is not an http(s) URL with a host")
    return url.rstrip("/")


def resolve_model(cfg: Llm) -> str:
    """The model name: $LFP_LLM_MODEL or params `llm.model`."""
    model = (os.environ.get(ENV_MODEL) or cfg.model).strip()
    if not model:
        raise ConfigError("params 'llm.model' is empty")
    return model


def is_loopback(url: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1 endpoints, which usually need no API key."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(cfg: Llm, base_url: str) -> str:
    """The key from the environment variable named by `llm.api_key_env` (never from params)."""
    key = os.environ.get(cfg.api_key_env, "").strip()
    if key:
        return key
    if is_loopback(base_url):
        return LOCAL_DUMMY_KEY
    raise BackendError(
        f"LLM endpoint {base_url}: no API key: set the environment variable {cfg.api_key_env} "
        f"(named by params 'llm.api_key_env')"
    )


def parse_json_reply(text: str) -> dict[str, Any]:
    """A JSON object from a model reply, tolerating a ```json fence around it."""
    body = text.strip()
    match = _FENCE.match(body)
    if match:
        body = match.group(1).strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        # Models sometimes wrap the object in prose: take the outermost {...}.
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object in the reply") from None
        try:
            obj = json.loads(body[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


class LlmClient:
    """`complete` / `complete_json` against an OpenAI-compatible `/chat/completions` endpoint.

    Retries (429, 408/409, 5xx, connection errors) use the openai client's exponential backoff
    with `llm.max_retries`; a final failure is one BackendError line naming the URL and status.
    """

    def __init__(self, cfg: Llm) -> None:
        from openai import OpenAI

        self.base_url = resolve_base_url(cfg)
        self.model = resolve_model(cfg)
        self.max_retries = cfg.max_retries
        self._key = resolve_api_key(cfg, self.base_url)
        self._client = OpenAI(
            api_key=self._key, base_url=self.base_url, timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    def __repr__(self) -> str:  # never show the key
        return f"LlmClient(base_url={self.base_url!r}, model={self.model!r})"

    def _scrub(self, text: str) -> str:
        """One line, capped, with the key removed in case a server echoes it back."""
        line = (text.splitlines() or [""])[0][:200]
        return line.replace(self._key, "***") if self._key else line

    def _fail(self, what: str) -> BackendError:
        return BackendError(f"LLM endpoint {self.base_url} (model {self.model}): {self._scrub(what)}")

    def complete(self, system: str, user: str) -> str:
        """The model's reply to one system + user message, at temperature 0."""
        import openai

        tries = f"after {self.max_retries + 1} attempt(s)"
        try:
            resp = self._client.chat.completions.create(
                model=self.model,
                temperature=0,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            )
        except openai.APIStatusError as exc:
            raise self._fail(f"HTTP {exc.status_code} {tries}: {exc.message}") from None
        except openai.APITimeoutError:
            raise self._fail(f"timed out {tries}") from None
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            raise self._fail(f"unreachable {tries} ({cause})") from None
        except (openai.OpenAIError, ValueError) as exc:  # e.g. a 200 whose body is not JSON
            raise self._fail(f"bad response: {type(exc).__name__}: {exc}") from None
        choices = getattr(resp, "choices", None)
        if not choices or choices[0].message is None or not isinstance(choices[0].message.content, str):
            raise self._fail("bad response: no choices[0].message.content")
        return choices[0].message.content

    def complete_json(self, system: str, user: str) -> dict[str, Any]:
        """`complete`, parsed as a JSON object (```json fences tolerated); otherwise BackendError."""
        reply = self.complete(system, user)
        try:
            return parse_json_reply(reply)
        except ValueError as exc:
            raise self._fail(f"reply is not a JSON object: {exc}: {reply[:80]!r}") from None
