"""A small client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Why one place: the explain and contrastive stages both talk to an LLM; the endpoint, the model,
the retry policy and the rule "the key comes only from the environment and never appears in a
log, an error or MLflow" live here once. So do the guards a weak model needs (measured with
SmolLM2-135M): `max_tokens` on every request, JSON-schema-constrained replies, and
`is_placeholder` for replies that echo the prompt's template. Stages get their client from
`lfp.llm.local_server.open_client`, which also starts a local llama.cpp server when `llm.server: local`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from lfp.core.sections import Llm
from lfp.core.errors import BackendError, ConfigError

ENV_BASE_URL = "LFP_LLM_BASE_URL"
ENV_MODEL = "LFP_LLM_MODEL"
LOCAL_DUMMY_KEY = "not-needed"  # local servers (llama.cpp, vLLM) accept any key
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)

# redaction lives in lfp.core.secrets (the core); re-exported here for the client's callers
from lfp.core.secrets import REDACTED, is_secret_query_name, redact, redact_url, url_secrets  # noqa: E402,F401


class _LogRedactor(logging.Filter):
    """Redacts the records of the HTTP client loggers (httpx logs every request URL at INFO, and
    OPENAI_LOG=debug turns them on): URLs via `redact_url`, plus the secrets it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to break
            return True
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_LOG_REDACTOR = _LogRedactor()
# A logger's filters see only the records made on that very logger, so every logger of these
# families gets one: openai, openai._base_client, httpx, httpcore, and the httpx2/httpcore2 that
# some openai releases vendor.
_HTTP_LOGGER_PREFIXES = ("openai", "httpx", "httpcore")


def _redact_http_logs(secrets: Iterable[str]) -> None:
    """Redact URLs (and these secrets) in everything the HTTP client stack logs from now on.
    Call it after the openai client is built: its modules create their loggers on import."""
    _LOG_REDACTOR.secrets.update(s for s in secrets if s and s != LOCAL_DUMMY_KEY)
    names = {n for n in logging.root.manager.loggerDict if n.startswith(_HTTP_LOGGER_PREFIXES)}
    for name in names | set(_HTTP_LOGGER_PREFIXES):
        logger = logging.getLogger(name)
        if _LOG_REDACTOR not in logger.filters:
            logger.addFilter(_LOG_REDACTOR)


# --------------------------------------------------------------------------------------------
# endpoint configuration
# --------------------------------------------------------------------------------------------


def resolve_base_url(cfg: Llm) -> str:
    """The endpoint URL: $LFP_LLM_BASE_URL or params `llm.base_url`, checked for scheme and host.

    A query string is kept (some gateways take `?api-version=...` or even `?api-key=...`): the
    client sends it with every request, and every place that shows the URL redacts it.
    """
    url = (os.environ.get(ENV_BASE_URL) or cfg.base_url).strip()
    where = f"${ENV_BASE_URL}" if os.environ.get(ENV_BASE_URL) else "params 'llm.base_url'"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unbalanced '[' in the host
        raise ConfigError(f"{where}: '{redact_url(url)}' is not an http(s) URL with a host") from None
    if "@" in parts.netloc:  # credentials would end up in logs, tags and error messages: never echo them
        raise ConfigError(f"{where}: credentials in the URL are not allowed; put the key in the variable named by 'llm.api_key_env'")
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"{where}: '{redact_url(url)}' is not an http(s) URL with a host")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return f"{base}?{parts.query}" if parts.query else base


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
        f"LLM endpoint {redact_url(base_url)}: no API key: set the environment variable {cfg.api_key_env} "
        f"(named by params 'llm.api_key_env')"
    )


class InvalidReply(BackendError):
    """The endpoint answered, but not with what was asked (not a JSON object, or cut off at
    max_tokens): callers that can skip one item count it instead of stopping the stage."""


# --------------------------------------------------------------------------------------------
# replies: JSON schemas, placeholders
# --------------------------------------------------------------------------------------------


def object_schema(properties: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON schema for an object with exactly these properties, all required: the form that
    OpenAI's strict structured outputs, vLLM and llama.cpp's grammar converter all accept."""
    return {"type": "object", "properties": {k: dict(v) for k, v in properties.items()},
            "required": list(properties), "additionalProperties": False}


_ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z0-9][\w \-/|.,]{0,40}>")  # <positive rewrite>, <1-5>, <your answer>
_FILLER_ONLY = re.compile(r"^[\s.…\-_*#?/\\|\[\](){}'\"`<>:;,]*$")  # "...", "[...]", "{...}", "…"
_FILL_PHRASE = re.compile(r"\binsert\b.{0,40}\bhere\b|\bgoes here\b|\blorem ipsum\b|\bplaceholder\b|\bTODO\b", re.IGNORECASE)
_MIN_ECHO_CHARS = 8  # a shorter reply ("Okay.") may well occur in a template by chance


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" \"'`.!?,;:")


def is_placeholder(text: Any, template_values: Iterable[str] = ()) -> bool:
    """True for a reply that fills a slot with a placeholder or an echo instead of content: empty,
    only dots/brackets ("...", "[...]"), an angle-bracket slot ("<positive rewrite>", "<1-5>"), an
    "insert ... here" phrase, or text equal to / copied out of one of `template_values` (the
    prompt's template, its example values, the slot names)."""
    if not isinstance(text, str):
        return True
    norm = _norm(text)
    if not norm or _FILLER_ONLY.match(text) or _ANGLE_PLACEHOLDER.search(text) or _FILL_PHRASE.search(text):
        return True
    for value in template_values:
        other = _norm(value)
        if other and (norm == other or (len(norm) >= _MIN_ECHO_CHARS and norm in other)):
            return True
    return False


def response_format(schema: Mapping[str, Any], name: str = "reply") -> dict[str, Any]:
    """`response_format` for a JSON-schema-constrained reply. llama.cpp and vLLM enforce the schema
    while decoding; `strict` stays false so gateways that reject a keyword (e.g. min/max) still
    answer, and every caller validates the parsed object itself."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema), "strict": False}}


def complete_json(client: Any, system: str, user: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`client.complete_json` with a JSON schema: a dict, or InvalidReply (BackendError) when the
    reply is not a JSON object."""
    return client.complete_json(system, user, schema=schema)


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

    `base_url` is the endpoint as it may be shown (credentials redacted by `redact_url`); the
    real one, query string included, only goes to the openai client. Every request carries
    `max_tokens` (params `llm.max_tokens` unless the call asks for more).

    `base_url` / `model` given here (a local server from lfp.llm.local_server) replace params and
    environment; such a client sends no key. `model_id` is what MLflow records as `llm_model`
    (the model name, or `<gguf file> sha256:<hex>`); `close()` runs `on_close` (stops that server).
    """

    def __init__(
        self, cfg: Llm, *, base_url: str | None = None, model: str | None = None, model_id: str | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        from openai import OpenAI

        url = resolve_base_url(cfg) if base_url is None else base_url
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self.base_url = redact_url(url)
        self.model = resolve_model(cfg) if model is None else model
        self.model_id = model_id or self.model
        self.max_retries = cfg.max_retries
        self.max_tokens = cfg.max_tokens
        self._on_close = on_close
        self.last_finish_reason: str | None = None  # "length": the last reply hit max_tokens
        # calls, prompt / completion tokens and seconds spent waiting, for logs and cost notes
        self.usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
        self._key = resolve_api_key(cfg, url) if base_url is None else LOCAL_DUMMY_KEY
        self._secrets = [self._key, *(v for n, v in query if is_secret_query_name(n) and v)]
        # The openai client appends paths to base_url as raw text, so a query left in it would end
        # up in the middle of the request path: it goes in `default_query` instead.
        self._client = OpenAI(
            api_key=self._key, base_url=url.partition("?")[0], default_query=dict(query) or None,
            timeout=cfg.timeout_s, max_retries=cfg.max_retries,
        )
        _redact_http_logs(self._secrets)

    def __repr__(self) -> str:  # never show the key
        return f"LlmClient(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Stop what this client owns (a local server); idempotent."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> LlmClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        """One line, capped, with the key and URL credentials removed in case a server echoes them."""
        line = (text.splitlines() or [""])[0]
        return redact(line, self._secrets)[:200]

    def _fail(self, what: str, kind: type[BackendError] = BackendError) -> BackendError:
        return kind(f"LLM endpoint {self.base_url} (model {self.model}): {self._scrub(what)}")

    def _request(self, call: Any, when: str, up_statuses: tuple[int, ...] = ()) -> Any:
        """`call()` with every client failure turned into one BackendError line ending in `when`;
        an HTTP status in `up_statuses` counts as an answer (returns None)."""
        import openai

        try:
            return call()
        except openai.APIStatusError as exc:
            if exc.status_code in up_statuses:
                return None
            raise self._fail(f"HTTP {exc.status_code} {when}: {exc.message}") from None
        except openai.APITimeoutError:
            raise self._fail(f"timed out {when}") from None
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            raise self._fail(f"unreachable {when} ({cause})") from None
        except (openai.OpenAIError, ValueError) as exc:  # e.g. a 200 whose body is not JSON
            raise self._fail(f"bad response {when}: {type(exc).__name__}: {exc}") from None

    def complete(self, system: str, user: str, *, max_tokens: int | None = None,
                 schema: Mapping[str, Any] | None = None) -> str:
        """The model's reply to one system + user message, at temperature 0, at most `max_tokens`
        (default params `llm.max_tokens`) long; `schema`: a JSON-schema-constrained reply."""
        extra: dict[str, Any] = {"response_format": response_format(schema)} if schema is not None else {}
        t0 = time.perf_counter()
        resp = self._request(lambda: self._client.chat.completions.create(
            model=self.model,
            temperature=0,
            max_tokens=max_tokens or self.max_tokens,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            **extra,
        ), f"after {self.max_retries + 1} attempt(s)")
        self._count(resp, time.perf_counter() - t0)
        choices = getattr(resp, "choices", None)
        if not choices or choices[0].message is None or not isinstance(choices[0].message.content, str):
            raise self._fail("bad response: no choices[0].message.content")
        self.last_finish_reason = getattr(choices[0], "finish_reason", None)
        return choices[0].message.content

    def _count(self, resp: Any, seconds: float) -> None:
        usage = getattr(resp, "usage", None)
        self.usage["calls"] += 1
        self.usage["seconds"] += seconds
        for key in ("prompt_tokens", "completion_tokens"):
            value = getattr(usage, key, None)
            if isinstance(value, int):
                self.usage[key] += value

    def check(self, timeout_s: float = 10.0) -> None:
        """Fail in seconds, before any heavy work, if the endpoint cannot be reached or refuses the
        key. One `GET /models`, no retries; a server without that route (404/405) counts as up."""
        client = self._client.with_options(max_retries=0, timeout=timeout_s)
        self._request(client.models.list, f"on the endpoint check (within {timeout_s:g} s)", up_statuses=(404, 405))

    def complete_json(self, system: str, user: str, schema: Mapping[str, Any] | None = None, *,
                      max_tokens: int | None = None) -> dict[str, Any]:
        """`complete` (constrained to `schema` if given), parsed as a JSON object (```json fences
        tolerated); otherwise InvalidReply, a BackendError (a reply cut at max_tokens says so)."""
        reply = self.complete(system, user, max_tokens=max_tokens, schema=schema)
        try:
            return parse_json_reply(reply)
        except ValueError as exc:
            cut = " (cut off at max_tokens)" if self.last_finish_reason == "length" else ""
            raise self._fail(f"reply is not a JSON object{cut}: {exc}: {reply[:80]!r}", InvalidReply) from None
