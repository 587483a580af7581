# Two commands set up everything on a fresh machine:
#   make demo   runs the sandbox demo (no Azure needed)
#   make test   runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Azurite (the Table Storage emulator) for the tests, installed locally; the tests start it.
AZURITE_VERSION := 3.37.0
AZURITE := .tools/node_modules/.bin/azurite-table
# checkov and azure-functions-doctor for the infrastructure checks, in a venv of their own: their
# dependency trees stay out of the app's. The stamp names the pins, so changing one reinstalls.
CHECKOV_VERSION := 3.3.30
AZURE_FUNCTIONS_DOCTOR_VERSION := 0.23.1
IAC_VENV := .tools/iac-venv
IAC_BIN := $(IAC_VENV)/bin
IAC_STAMP := $(IAC_VENV)/.installed-checkov-$(CHECKOV_VERSION)-doctor-$(AZURE_FUNCTIONS_DOCTOR_VERSION)

.PHONY: demo test lint typecheck check clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(AZURITE): Makefile
	npm install --prefix .tools --no-audit --no-fund --save-exact azurite@$(AZURITE_VERSION)
	touch $@

$(IAC_STAMP):
	rm -rf $(IAC_VENV)
	$(PYTHON) -m venv $(IAC_VENV)
	$(IAC_BIN)/pip install --quiet --disable-pip-version-check \
		checkov==$(CHECKOV_VERSION) azure-functions-doctor==$(AZURE_FUNCTIONS_DOCTOR_VERSION)
	touch $@

# Chromium for the HTML report's browser tests (tests/report), from the distribution's packages:
# installed only when no `chromium` is on the PATH and apt-get is there to install it.
CHROMIUM_STAMP := .tools/.chromium-checked
$(CHROMIUM_STAMP):
	@if ! command -v chromium >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1; then \
			apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
		else \
			echo "note: no chromium and no apt-get; tests/report/test_report_html.py needs one"; \
		fi; \
	fi
	@if command -v chromium >/dev/null 2>&1; then mkdir -p .tools && touch $@; fi

demo: $(STAMP)
	$(BIN)/guardrails demo

test: $(STAMP) $(AZURITE) $(IAC_STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: test lint typecheck

# The Bicep templates and the app's deployment shape, offline: checkov (with infra/checks), then
# tests/infra (the broken copy, host.json invariants, .funcignore, azure-functions-doctor).
.PHONY: infra-check
infra-check: $(STAMP) $(IAC_STAMP)
	$(IAC_BIN)/checkov -d infra --compact --quiet
	$(BIN)/python -m pytest -q tests/infra

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
