# Cohort — `make help` lists the targets. Needs only Python 3.11 on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt requirements-dev.txt requirements-nodeps.txt constraints.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) 2>/dev/null | sha1sum | cut -c1-12)
COHORT := $(PY) scripts/cohort.py
PYTEST_ARGS ?=

.PHONY: help install run test frontend test-fast bench bench-gpu lint fmt typecheck importlint migrations-check reliability clean-state

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}'

# requirements-nodeps.txt: packages installed without their declared dependencies (see that file).
$(STAMP): $(REQUIREMENTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt -c constraints.txt
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## Create .venv and install pinned dependencies (only what is missing)

run: install ## Start Cohort: DB+Redis (embedded unless DATABASE_URL/REDIS_URL), migrate, seed, serve :8000 + worker
	$(COHORT) run

test: install ## Run the whole suite: the web app's Vitest tests and build, then pytest against real PostgreSQL and Redis
	$(PY) scripts/frontend.py test
	$(PY) scripts/frontend.py build
	$(COHORT) exec -- $(PY) -m pytest $(PYTEST_ARGS)

frontend: install ## Build the web app (frontend/dist; cached by a hash of its sources and lock file)
	$(PY) scripts/frontend.py build

test-fast: install ## The suite without end-to-end and slow tests
	$(COHORT) exec -- $(PY) -m pytest -m "not e2e and not slow" $(PYTEST_ARGS)

test-gpu: install ## Only the tests that need CUDA
	$(COHORT) exec -- $(PY) -m pytest -m gpu $(PYTEST_ARGS)

reliability: install ## Run the RELIABILITY.md tests; figures land in reports/<ID>.json
	$(COHORT) exec -- $(PY) -m pytest tests/security tests/apps/audit $(PYTEST_ARGS)

bench: install ## Benchmarks: results in bench/results/*.json, summary in docs/benchmarks.md
	$(COHORT) exec -- $(PY) -m bench.run

bench-gpu: install ## GPU benchmark (CUDA, bf16): engine vs bare loop on a CNN and MiniLM; < 4 min on one GPU
	$(PY) -m bench.gpu

lint: install ## ruff (lint + format check) and import-linter contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

fmt: install ## Format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

importlint: install ## import-linter contracts only
	$(VENV)/bin/lint-imports

typecheck: install ## mypy
	$(COHORT) exec -- $(VENV)/bin/mypy apps workers config

migrations-check: install ## Fail if models and migrations disagree
	$(COHORT) exec -- $(PY) manage.py makemigrations --check --dry-run

clean-state: ## Delete the embedded PostgreSQL/Redis data and generated dev secrets (.cohort/)
	rm -rf .cohort
