"""LlmClient against a real HTTP stub of /v1/chat/completions on 127.0.0.1 (the real openai client)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lfp.core.sections import Llm
from lfp.core.errors import BackendError, ConfigError
from lfp.llm.client import LlmClient, parse_json_reply, redact, redact_url

PLANTED_KEY = "sk-planted-SECRET-4242"
KEY_ENV = "LFP_TEST_LLM_KEY"

Reply = tuple[int, Any]  # (HTTP status, body: dict -> JSON, str -> raw text)


def chat_body(content: str) -> dict[str, Any]:
    """A minimal, valid chat.completion response."""
    return {
        "id": "stub-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
    }


class StubServer:
    """An OpenAI-compatible stub: `responder(request_json, n_calls) -> (status, body)`."""

    def __init__(self, responder: Callable[[dict[str, Any], int], Reply]) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.gets: list[tuple[str, dict[str, str]]] = []  # (path, headers) of GET requests (LlmClient.check)
        self.get_status = 200  # what GET /models answers (a real OpenAI-compatible server lists its models)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                stub.gets.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                ok = stub.get_status == 200 and self.path.rstrip("/").endswith("/models")
                body = ({"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]}
                        if ok else {"error": {"message": "stub: no such route", "type": "invalid_request_error"}})
                raw = json.dumps(body).encode()
                self.send_response(200 if ok else (stub.get_status if stub.get_status != 200 else 404))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append({"path": self.path, **payload})
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, body = stub.responder(payload, len(stub.requests))
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("retry-after-ms", "5")  # keep retries fast in tests
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def stub() -> Iterator[Callable[[Callable[[dict[str, Any], int], Reply]], StubServer]]:
    servers: list[StubServer] = []

    def start(responder: Callable[[dict[str, Any], int], Reply]) -> StubServer:
        server = StubServer(responder).__enter__()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.__exit__(None, None, None)


def cfg_for(url: str, **kw: Any) -> Llm:
    return Llm(base_url=url, model="stub-model", api_key_env=KEY_ENV, timeout_s=5.0, max_retries=kw.pop("max_retries", 2), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_complete_sends_messages_at_temperature_zero(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body("hello there")))
    client = LlmClient(cfg_for(server.url))
    assert client.complete("sys prompt", "user prompt") == "hello there"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["temperature"] == 0 and req["model"] == "stub-model"
    assert req["messages"] == [{"role": "system", "content": "sys prompt"}, {"role": "user", "content": "user prompt"}]
    assert server.headers[0]["authorization"] == f"Bearer {PLANTED_KEY}"
    assert PLANTED_KEY not in repr(client)


def test_retries_429_then_succeeds(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (429, {"error": {"message": "slow down"}}) if n == 1 else (200, chat_body('{"related": true}')))
    assert LlmClient(cfg_for(server.url)).complete_json("s", "u") == {"related": True}
    assert len(server.requests) == 2


def test_500_forever_fails_with_one_line_naming_url_and_status(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (500, {"error": {"message": "boom"}}))
    with pytest.raises(BackendError) as info:
        LlmClient(cfg_for(server.url, max_retries=2)).complete("s", "u")
    msg = str(info.value)
    assert server.url in msg and "500" in msg and "\n" not in msg
    assert len(server.requests) == 3  # 1 try + 2 retries


def test_non_retryable_4xx_fails_at_once(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (401, {"error": {"message": "bad key"}}))
    with pytest.raises(BackendError, match="HTTP 401"):
        LlmClient(cfg_for(server.url)).complete("s", "u")
    assert len(server.requests) == 1


def test_malformed_json_reply_is_a_backend_error(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body("sure! related: yes")))
    with pytest.raises(BackendError, match="not a JSON object") as info:
        LlmClient(cfg_for(server.url)).complete_json("s", "u")
    assert server.url in str(info.value)


def test_malformed_http_body_is_a_backend_error(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, "{not json at all"))
    with pytest.raises(BackendError) as info:
        LlmClient(cfg_for(server.url, max_retries=0)).complete("s", "u")
    assert server.url in str(info.value)


def test_json_fences_are_tolerated(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body('```json\n{"related": false}\n```')))
    assert LlmClient(cfg_for(server.url)).complete_json("s", "u") == {"related": False}
    assert parse_json_reply('Here you go: {"a": 1} done') == {"a": 1}
    with pytest.raises(ValueError):
        parse_json_reply("[1, 2]")


def test_unreachable_port_names_the_url(monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="unreachable") as info:
        LlmClient(cfg_for(url, max_retries=1)).complete("s", "u")
    assert url in str(info.value) and "\n" not in str(info.value)


def test_key_never_leaks_into_logs_or_errors(stub, monkeypatch, caplog, capsys):
    """Even when the server echoes the Authorization header back in its error body."""
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    monkeypatch.setenv("OPENAI_LOG", "debug")

    def echo(req: dict[str, Any], n: int) -> Reply:
        return 500, {"error": {"message": f"invalid key {server.headers[-1].get('authorization')}"}}

    server = stub(echo)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as info:
        LlmClient(cfg_for(server.url, max_retries=1)).complete("s", "u")
    out = capsys.readouterr()
    assert PLANTED_KEY in server.headers[0]["authorization"]  # the key was really sent
    for text in (str(info.value), caplog.text, out.out, out.err):
        assert PLANTED_KEY not in text


def test_missing_key_loopback_uses_dummy_remote_fails(stub, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server = stub(lambda req, n: (200, chat_body("ok")))
    assert LlmClient(cfg_for(server.url)).complete("s", "u") == "ok"
    assert server.headers[0]["authorization"] == "Bearer not-needed"
    with pytest.raises(BackendError, match=KEY_ENV):
        LlmClient(cfg_for("https://llm.example.com/v1"))


@pytest.mark.parametrize("url", ["ftp://host/v1", "not a url", "http:///v1", "localhost:8000/v1", "https://u:pw@host/v1"])
def test_bad_base_url_is_a_config_error(url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with pytest.raises(ConfigError, match="llm.base_url") as info:
        LlmClient(cfg_for(url))
    assert ":pw@" not in str(info.value)


def test_env_overrides_base_url_and_model(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body("ok")))
    monkeypatch.setenv("LFP_LLM_BASE_URL", server.url)
    monkeypatch.setenv("LFP_LLM_MODEL", "override-model")
    client = LlmClient(cfg_for("https://unused.example.com/v1"))
    assert client.complete("s", "u") == "ok"
    assert server.requests[0]["model"] == "override-model"
    monkeypatch.setenv("LFP_LLM_BASE_URL", "gopher://x")
    with pytest.raises(ConfigError, match="LFP_LLM_BASE_URL"):
        LlmClient(cfg_for(server.url))


# --------------------------------------------------------------------------------------------
# credentials in the URL's query string (fault: the key was echoed to stderr and tagged in MLflow)
# --------------------------------------------------------------------------------------------

QUERY_KEY = "sk-QUERY-key-7777"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://h/v1?api-key=sk-1", "https://h/v1?api-key=***"),
    ("https://h/v1?api_key=sk-1&api-version=2024-06-01", "https://h/v1?api_key=***&api-version=2024-06-01"),
    ("https://h/v1?key=a&token=b&access_token=c&sig=d&code=e&X-Amz-Signature=f&client_secret=g&password=h",
     "https://h/v1?key=***&token=***&access_token=***&sig=***&code=***&X-Amz-Signature=***&client_secret=***&password=***"),
    ("https://user:pw@h:8443/v1?x=1", "https://***@h:8443/v1?x=1"),
    ("https://h/cb#access_token=t&state=s", "https://h/cb#access_token=***&state=s"),
    ("sqlite:////tmp/a b/mlflow.db", "sqlite:////tmp/a b/mlflow.db"),  # kept character for character
    ("https://h/v1?signal=1&design=2&page=3", "https://h/v1?signal=1&design=2&page=3"),
    ("https://h/v1?api-key=", "https://h/v1?api-key="),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_finds_urls_inside_text_and_known_secrets():
    text = "failed: POST https://h/v1/chat/completions?api-key=sk-1 (key sk-ENV-123456 rejected)"
    assert redact(text, {"sk-ENV-123456"}) == "failed: POST https://h/v1/chat/completions?api-key=*** (key *** rejected)"


def test_key_in_base_url_query_is_sent_but_never_shown(stub, monkeypatch, caplog, capsys):
    """`LFP_LLM_BASE_URL=https://host/v1?api-key=...`: the query goes with every request (it used to
    be glued into the path), and the URL is shown everywhere as `?api-key=***`: the client's
    `base_url` (what explain tags as `llm_base_url`), repr, errors, and the openai/httpx logs."""
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    monkeypatch.setenv("OPENAI_LOG", "debug")
    caplog.set_level(logging.DEBUG)
    server = stub(lambda req, n: (200, chat_body("ok")) if n == 1 else (500, {"error": {"message": f"bad {server.requests[-1]['path']}"}}))
    monkeypatch.setenv("LFP_LLM_BASE_URL", f"{server.url}?api-key={QUERY_KEY}&api-version=2024-06-01")
    client = LlmClient(cfg_for("https://unused.example.com/v1", max_retries=0))
    assert client.complete("s", "u") == "ok"
    assert server.requests[0]["path"] == f"/v1/chat/completions?api-key={QUERY_KEY}&api-version=2024-06-01"
    with pytest.raises(BackendError, match="HTTP 500") as info:
        client.complete("s", "u")
    assert client.base_url == f"{server.url}?api-key=***&api-version=2024-06-01"
    assert client.base_url in str(info.value)
    out = capsys.readouterr()
    assert "chat/completions" in caplog.text  # httpx did log the request line, redacted
    for text in (client.base_url, repr(client), str(info.value), caplog.text, out.out, out.err):
        assert QUERY_KEY not in text and PLANTED_KEY not in text


@pytest.mark.parametrize("url", ["ftp://host/v1?token=sk-QUERY-key-7777", "http:///v1?api-key=sk-QUERY-key-7777"])
def test_bad_base_url_error_redacts_the_query(url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with pytest.raises(ConfigError, match="not an http") as info:
        LlmClient(cfg_for(url))
    assert QUERY_KEY not in str(info.value) and "=***" in str(info.value)


def test_missing_key_error_redacts_the_query(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=KEY_ENV) as info:
        LlmClient(cfg_for(f"https://llm.example.com/v1?code={QUERY_KEY}"))
    assert QUERY_KEY not in str(info.value)


def test_endpoint_check_lists_models_with_the_key_and_sends_no_completion(stub, monkeypatch):
    server = stub(lambda req, n: (200, chat_body("unused")))
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    LlmClient(cfg_for(server.url)).check()
    assert [path for path, _ in server.gets] == ["/v1/models"] and server.requests == []
    assert server.gets[0][1]["authorization"] == f"Bearer {PLANTED_KEY}"


@pytest.mark.parametrize(("status", "up"), [(404, True), (405, True), (401, False), (500, False)])
def test_endpoint_check_counts_a_missing_models_route_as_up(stub, monkeypatch, status, up):
    server = stub(lambda req, n: (200, chat_body("unused")))
    server.get_status = status
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    client = LlmClient(cfg_for(server.url))
    if up:
        client.check()
    else:
        with pytest.raises(BackendError, match=rf"HTTP {status} on the endpoint check") as info:
            client.check()
        assert server.url in str(info.value) and PLANTED_KEY not in str(info.value)
    assert len(server.gets) == 1  # no retries


def test_endpoint_check_of_an_unreachable_port_fails_at_once(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with pytest.raises(BackendError, match="unreachable on the endpoint check") as info:
        LlmClient(cfg_for(url, max_retries=3)).check()
    assert url in str(info.value)
