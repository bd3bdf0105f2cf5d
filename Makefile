# Everything the project needs is installed by these targets: nothing by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

# The simulated studio provider renders at a tenth of real time under `make run` (a 3-row
# batch in about 10 s); `make run BATCHOPS_SIM_TIME_SCALE=1` renders in real time.
BATCHOPS_SIM_TIME_SCALE ?= 0.1

.PHONY: install run demo test lint format bench browser screenshots clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: migrate, load demo data, serve on http://$(HOST):$(PORT) (SQLite, embedded worker)
run: install
	$(VENV)/bin/batchops migrate
	$(VENV)/bin/batchops demo --admin admin
	@echo "admin token: $$($(VENV)/bin/batchops token admin)"
	@echo "console: http://$(HOST):$(PORT)/console (sign-ins above)"
	BATCHOPS_BOOTSTRAP_ADMIN=admin BATCHOPS_SIM_TIME_SCALE=$(BATCHOPS_SIM_TIME_SCALE) \
		$(VENV)/bin/batchops serve --host $(HOST) --port $(PORT)

## make demo: the demo data in a fresh database (stop `make run` first, start it again after)
demo: install
	$(VENV)/bin/batchops demo --reset --admin admin

## make test: every test; PostgreSQL/Redis/RabbitMQ tests run where reachable (required when CI=true)
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

format: install
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

## make bench: benchmarks over real HTTP against servers started by the bench itself
bench: install
	$(PY) -m bench $(BENCH_ARGS)

## make browser: Debian's chromium (and a CJK font for the zh-CN screenshots) for tests/console, when missing
browser:
	@if dpkg -s chromium fonts-wqy-microhei >/dev/null 2>&1; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei; \
	else echo "chromium missing: run 'sudo apt-get install chromium fonts-wqy-microhei' (tests/console skip without it, fail under CI)"; fi

## make screenshots: the console's browser tests on SQLite, saving the README's screenshots in docs/screenshots
screenshots: install browser
	BATCHOPS_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest -q -p no:cacheprovider tests/console -k "browser and sqlite"

## make clean: the venv and caches; the database (your data) stays where it is, and this says where
clean:
	@if [ -x $(PY) ]; then \
		echo "kept the database $$($(PY) -c 'from batchops.settings import get_settings; print(get_settings().database_url)')"; \
		echo "(\`make demo\` reloads the demo into a fresh one; delete the file yourself to drop it)"; \
	fi
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
