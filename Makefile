# Two commands do everything: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install demo test test-live unit clean schema bench

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Node dev tools (Azurite for the Table Storage ledger tests): `npm ci` from the lock, `npm install` without one.
$(NODE_STAMP): package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	touch $(NODE_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m p2csync demo

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q

# Opt-in: the local host against a real Service Bus namespace (P2C_LIVE_SERVICEBUS_NAMESPACE, docs/deploy.md).
test-live: $(STAMP)
	$(PY) -m pytest -q -m live tests/live

# Every benchmark of issue 11 in one go (under 10 minutes on 2 cores): report in .var/bench/, printed too.
bench: $(STAMP)
	$(PY) -m bench

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

schema: $(STAMP)
	$(PY) -m p2csync schema > mappings/mapping.schema.json

clean:
	rm -rf $(VENV) .var .pytest_cache
