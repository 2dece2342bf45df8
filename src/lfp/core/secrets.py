"""Redaction: the one place that decides what of a URL or a text may be shown, logged or tagged.

Why its own module: the MLflow tracking code (imported by every stage) and the LLM client both need
it; while it lived in lfp.llm.client, every stage listed the OpenAI client as a DVC dependency, so editing
the client re-ran the whole pipeline, fine-tuning included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote_plus


REDACTED = "***"
# A query/fragment parameter whose name contains one of these words holds a credential
# (api-key, api_key, key, token, access_token, X-Amz-Signature, client_secret, password, ...);
# `sig` (Azure SAS), `code` (OAuth) and `pass` only as whole words.
_SECRET_QUERY_NAME = re.compile(
    r"key|token|secret|passw|pwd|auth|credential|signature|session|jwt|bearer|(?:^|[_.-])(?:sig|code|pass)(?:$|[_.-])"
)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_PARAM_IN_TEXT = re.compile(r"([?&#])([^=&\s?#'\"]+)=([^&\s'\"<>#]*)")
_MIN_SECRET_LEN = 4  # shorter "secrets" (e.g. an empty or 1-char dummy key) would blank out ordinary text


def is_secret_query_name(name: str) -> bool:
    """True for a URL parameter name that looks like it carries a credential."""
    return bool(_SECRET_QUERY_NAME.search(unquote_plus(name).lower()))


def _redact_params(params: str) -> str:
    items = []
    for item in params.split("&"):
        name, eq, value = item.partition("=")
        items.append(f"{name}={REDACTED}" if eq and value and is_secret_query_name(name) else item)
    return "&".join(items)


def redact_url(url: str) -> str:
    """`url` fit to show: `user:pass@` becomes `***@`, and the value of every query (or fragment)
    parameter whose name looks like a key, token, secret, password, signature or auth code becomes
    `***`. Everything else is kept character for character (no re-encoding)."""
    head, hashmark, fragment = url.partition("#")
    base, qmark, query = head.partition("?")
    base = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", base)
    if query:
        query = _redact_params(query)
    if "=" in fragment:
        fragment = _redact_params(fragment)
    return f"{base}{qmark}{query}{hashmark}{fragment}"


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries (its `user:pass` and its secret query values), to scrub from
    any text that might repeat them in another form (e.g. urllib3's `url: /?token=...`)."""
    head = url.partition("#")[0]
    base, _, query = head.partition("?")
    found = []
    match = _USERINFO.match(base)
    if match:
        userinfo = match.group(2)[:-1]
        found += [userinfo, userinfo.partition(":")[2]]
    found += [v for n, v in parse_qsl(query, keep_blank_values=True) if v and is_secret_query_name(n)]
    return [s for s in found if s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it passed through `redact_url`, every secret-looking `?name=value`
    / `&name=value` (also of a relative URL) redacted, and every known secret value (e.g. the API
    key) replaced by `***`: for error messages, log lines, MLflow tags and params."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, REDACTED)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _PARAM_IN_TEXT.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}" if m.group(3) and is_secret_query_name(m.group(2)) else m.group(0),
        text,
    )
