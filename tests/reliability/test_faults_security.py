"""Secrets and unsafe loading: a planted API key never lands in any file or stream the pipeline
writes; the source tree has no pickle / remote-code / shell-injection paths.

Unit-level counterparts: tests/test_llm.py::test_key_never_leaks_into_logs_or_errors (key echoed by
the server, logs at debug), tests/test_llm.py::test_bad_base_url_is_a_config_error (no credentials
or non-http URLs), tests/test_tracking.py::test_stage_run_logs_tags_params_and_the_same_metrics
(secret-looking params are not logged to MLflow).
"""

from __future__ import annotations

import ast
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_helpers import PLANTED_KEY, ROOT, assert_user_error, hh_pairs, run_lfp, write_jsonl, write_params
from rel_helpers import mlflow_uri, project  # noqa: F401 - fixtures

from lfp.core import paths

# --------------------------------------------------------------------------------------------
# a planted key through a real stage run
# --------------------------------------------------------------------------------------------

REPLY = {"toxicity": 1, "dangerousness": 1, "bias": 1, "positive": "Happy to help.", "neutral": "I see.", "negative": "Go away."}


class StubLlm(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible endpoint on localhost: lists its model on `GET /models` (the client's
    endpoint check) and answers every chat call with REPLY, or, when `echo_key`, fails every
    request, the check included, with a 500 whose body repeats the Authorization header it received."""

    def __init__(self, echo_key: bool) -> None:
        self.echo_key = echo_key
        self.auth_headers: list[str] = []
        self.paths: list[str] = []  # with the query string
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StubLlm

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._reply({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}]})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._reply({"id": "c1", "object": "chat.completion", "created": 0, "model": "stub",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(REPLY)}}]})

    def _reply(self, ok_body: dict) -> None:
        auth = self.headers.get("authorization", "")
        self.server.auth_headers.append(auth)
        self.server.paths.append(self.path)
        if self.server.echo_key:
            status, body = 500, {"error": {"message": f"invalid credentials {auth} for {self.path}", "type": "server_error"}}
        else:
            status, body = 200, ok_body
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stub_llm(request: pytest.FixtureRequest) -> Iterator[StubLlm]:
    server = StubLlm(echo_key=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def key_hits(*roots: Path) -> list[str]:
    """Every file below the roots whose bytes contain the planted key (sqlite pages included)."""
    return [str(p) for root in roots for p in root.rglob("*") if p.is_file() and PLANTED_KEY.encode() in p.read_bytes()]


@pytest.mark.parametrize("stub_llm", [False, True], ids=["llm_answers", "llm_echoes_the_key"], indirect=True)
def test_planted_api_key_is_sent_but_never_written(project, mlflow_uri, stub_llm):
    """`lfp contrastive --task hh` with the openai backend against a local endpoint: the key goes
    out in the Authorization header only; outputs, MLflow's database, stdout and stderr hold none
    of it — also when the server echoes it back in an error."""
    root, env = project
    write_params(root, lambda d: (d["contrastive"]["hh"].update(backend="openai", max_triples=2),
                                  d["llm"].update(max_retries=0, timeout_s=10.0)))
    write_jsonl(root / "data/prepared/hh/heldout.jsonl", hh_pairs(3))
    proc = run_lfp(["contrastive", "--task", "hh"], root,
                   {**env, "OPENAI_API_KEY": PLANTED_KEY, "LFP_LLM_BASE_URL": stub_llm.url, "OPENAI_LOG": "debug"})
    assert stub_llm.auth_headers and all(h == f"Bearer {PLANTED_KEY}" for h in stub_llm.auth_headers)
    if stub_llm.echo_key:
        assert_user_error(proc, "contrastive", f"LLM endpoint {stub_llm.url}", "HTTP 500")
        assert not (root / paths.contrastive_file("hh")).exists()
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(Path(root / paths.contrastive_file("hh")).read_text().splitlines()) == 2
    store = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    assert key_hits(root, store) == []
    assert PLANTED_KEY not in proc.stdout and PLANTED_KEY not in proc.stderr


@pytest.mark.parametrize("stub_llm", [False, True], ids=["llm_answers", "llm_echoes_the_key"], indirect=True)
def test_key_in_the_base_url_query_is_sent_but_never_shown_or_written(project, mlflow_uri, stub_llm):
    """`LFP_LLM_BASE_URL=http://host/v1?api-key=<key>` (gateways that take the key in the query).
    Before: the request path was `/v1?api-key=<key>chat/completions` and the error line on stderr
    showed the key. Now the query goes with every request, and every shown URL reads `?api-key=***`."""
    root, env = project
    write_params(root, lambda d: (d["contrastive"]["hh"].update(backend="openai", max_triples=2),
                                  d["llm"].update(max_retries=0, timeout_s=10.0)))
    write_jsonl(root / "data/prepared/hh/heldout.jsonl", hh_pairs(3))
    query = f"api-key={PLANTED_KEY}&api-version=2024-06-01"
    proc = run_lfp(["contrastive", "--task", "hh"], root,
                   {**env, "LFP_LLM_BASE_URL": f"{stub_llm.url}?{query}", "OPENAI_LOG": "debug"})
    assert PLANTED_KEY not in proc.stdout and PLANTED_KEY not in proc.stderr, proc.stderr[-3000:]
    # the endpoint check (`GET /models`) first, then the chat calls (none when the check already failed)
    assert stub_llm.paths and stub_llm.paths[0] == f"/v1/models?{query}", stub_llm.paths
    assert all(p == f"/v1/chat/completions?{query}" for p in stub_llm.paths[1:]), stub_llm.paths
    if stub_llm.echo_key:
        assert_user_error(proc, "contrastive", f"LLM endpoint {stub_llm.url}?api-key=***&api-version=2024-06-01", "HTTP 500")
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    store = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    assert key_hits(root, store) == []


# --------------------------------------------------------------------------------------------
# the source tree
# --------------------------------------------------------------------------------------------

YAML_LOAD = r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load"
SAFE_LOADERS = {"SafeLoader", "CSafeLoader"}
FORBIDDEN = {
    r"trust_remote_code\s*=\s*True": "runs code shipped with a model",
    r"\bimport pickle\b|\bpickle\.load|\bcloudpickle\b|\bjoblib\.load": "unpickling runs arbitrary code",
    r"\btorch\.load\(": "torch.load unpickles",
    r"allow_pickle\s*=\s*True": "np.load with pickles",
    r"shell\s*=\s*True|os\.system\(|os\.popen\(": "shell injection",
    YAML_LOAD: "yaml.load builds arbitrary objects (unless its Loader is a SafeLoader)",
    r"(?<![\w.])(eval|exec)\(": "evaluates strings as code",
    r"verify\s*=\s*False": "disables TLS verification",
}


def safe_yaml_load_lines(text: str) -> set[int]:
    """Lines of `yaml.load(..., Loader=X)` where X is yaml's SafeLoader or a class of this module
    that derives from it (e.g. one refusing duplicate keys): those build plain data only."""
    tree = ast.parse(text)
    safe = set(SAFE_LOADERS)
    changed = True
    while changed:  # classes deriving from a safe loader, also through each other
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name not in safe and any(
                    (b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None)) in safe for b in node.bases):
                safe.add(node.name)
                changed = True
    lines = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            name = loader.attr if isinstance(loader, ast.Attribute) else getattr(loader, "id", None)
            if name in safe:
                lines.add(node.lineno)
    return lines


def unsafe_hits(where: str, text: str) -> list[str]:
    safe_yaml = safe_yaml_load_lines(text)
    return [f"{where}:{lineno}: {why}: {line.strip()}"
            for lineno, line in enumerate(text.splitlines(), start=1)
            for pattern, why in FORBIDDEN.items()
            if re.search(pattern, line) and not (pattern == YAML_LOAD and lineno in safe_yaml)]


def test_source_has_no_unsafe_loading_or_shell():
    hits = [hit for path in sorted((ROOT / "src").rglob("*.py"))
            for hit in unsafe_hits(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))]
    assert hits == []


def test_yaml_load_is_allowed_only_with_a_safe_loader():
    ok = "import yaml\nclass Strict(yaml.SafeLoader):\n    pass\nclass Stricter(Strict):\n    pass\n" \
         "a = yaml.load(s, Loader=Strict)\nb = yaml.load(s, Loader=yaml.SafeLoader)\nc = yaml.load(s, Loader=Stricter)\n"
    assert unsafe_hits("ok.py", ok) == []
    bad = "import yaml\nclass Mine(yaml.Loader):\n    pass\na = yaml.load(s, Loader=Mine)\nb = yaml.load(s)\nc = yaml.full_load(s)\n"
    assert [h.split(":")[1] for h in unsafe_hits("bad.py", bad)] == ["4", "5", "6"]


def test_every_from_pretrained_refuses_remote_code():
    """Each `from_pretrained(` call names trust_remote_code=False within its argument list."""
    missing = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"from_pretrained\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if "trust_remote_code=False" not in text[m.end(): i]:
                missing.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert missing == []


def test_the_scanner_can_fail():
    """The patterns really match the unsafe forms (so an empty hit list means something)."""
    bad = ["m = AutoModel.from_pretrained(x, trust_remote_code=True)", "import pickle", "torch.load(f)",
           "np.load(p, allow_pickle=True)", "subprocess.run(c, shell=True)", "yaml.load(s)", "eval(s)",
           "httpx.get(u, verify=False)"]
    assert all(any(re.search(p, line) for p in FORBIDDEN) for line in bad)
    assert not any(re.search(p, "model.eval()") for p in FORBIDDEN)
