# Two commands for a newcomer: `make run` (the main job on the embedded default) and `make test`.
# Both create .venv when it is missing or older than the requirement files, then install.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv stats ui exps serve compare report plots docs clean-venv tracking-server tracking-stop tracking-status tracking-migrate push pull remote

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, found {sys.version.split()[0]}: set PYTHON=/path/to/python3.11"'
	@if [ ! -x $(BIN)/python ] || ! $(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then \
		rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# DVC stages call `python -m stages...`: put the venv first on PATH so they use it.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m stages.show_stats

stats: $(STAMP)
	$(BIN)/python -m stages.show_stats

# A sweep on one screen, as a Markdown table: the params the experiments changed and the headline metrics (the
# columns of the stages' file dependencies, paths with 32-character hashes, dropped). Plain `dvc exp show` lists
# every param the stages depend on.
exps: $(STAMP)
	$(BIN)/dvc exp show --only-changed --drop '^(data|experiments)/|^(Created|State|Executor)$$' --md

# The MLflow UI on this clone's store ($MLFLOW_TRACKING_URI, else mlflow.db), bound to 127.0.0.1, opening on the
# training runs with their headline metrics (MLflow's server with the `seqrerank` app, recsys_core/ui_app.py).
UI_PORT ?= 5000
ui: $(STAMP)
	$(BIN)/python -m stages.cli ui --port $(UI_PORT)

# The promoted two-stage model as a REST service on 127.0.0.1 (POST /invocations, see README): MLflow's scoring
# server behind the request guard of recsys_core/serving.py (body size, rows, requests in flight), run by the venv's
# own uvicorn, so no activated venv is needed. SERVE_MODEL= serves another model URI or a model folder.
DATASET ?= ml-100k
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/$(DATASET)-two-stage@champion
serve: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		RECSYS_SERVE_MODEL="$(SERVE_MODEL)" $(BIN)/uvicorn --factory recsys_core.serving_guard:scoring_app \
		--host 127.0.0.1 --port $(SERVE_PORT)

# The team setup: an MLflow tracking server on a PostgreSQL cluster kept in $(TRACKING_DIR), proxied artifacts, on
# 127.0.0.1 (TRACKING_HOST=0.0.0.0 opens it to the network). Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5050
TRACKING_DIR ?= $(CURDIR)/.tracking
TRACKING_PORT ?= 5050
PG_PORT ?= 5433
TRACKING_HOST ?= 127.0.0.1
TRACKING_FLAGS = --folder "$(TRACKING_DIR)" --port $(TRACKING_PORT) --pg_port $(PG_PORT) --host $(TRACKING_HOST)
tracking-server: $(STAMP)
	$(BIN)/python -m stages.cli tracking start $(TRACKING_FLAGS)

tracking-stop: $(STAMP)
	$(BIN)/python -m stages.cli tracking stop $(TRACKING_FLAGS)

tracking-status: $(STAMP)
	$(BIN)/python -m stages.cli tracking status $(TRACKING_FLAGS)

# copy the embedded store (mlflow.db + mlartifacts/) into the server: runs, logged models, versions, aliases
tracking-migrate: $(STAMP)
	$(BIN)/python -m stages.cli tracking migrate $(TRACKING_FLAGS)

# The DVC remote: data, embeddings, candidates and models (default: a folder beside the repository, see .dvc/config).
# `make remote URL=s3://bucket/path` makes any DVC remote URL the default; commit .dvc/config to share it.
push: $(STAMP)
	$(BIN)/dvc push

pull: $(STAMP)
	$(BIN)/dvc pull

remote: $(STAMP)
	@test -n "$(URL)" || { echo "usage: make remote URL=s3://bucket/path (or a folder, ssh://, gs://, azure://...)"; exit 2; }
	$(BIN)/dvc remote add --default --force storage "$(URL)"

compare: $(STAMP)
	$(BIN)/python -m stages.cli compare --dataset $(DATASET)

# The offline HTML report of the last two-stage evaluation (the DVC stage `report`; `make run` makes it too).
report: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro report
	@ls reports/*/seed*/report.html

# DVC's plots (validation curves of the retriever and reranker, the loss) as a page that renders offline.
plots: $(STAMP)
	$(BIN)/python -m stages.cli plots

# The documentation site (docs/*.md, Sphinx with MyST): warnings are errors, as in the tests.
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n auto --dist worksteal --durations=25

clean-venv:
	rm -rf $(VENV)
