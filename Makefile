# Two commands on a fresh machine:  make repro  |  make test
# Both create .venv and install what they need first (idempotent: re-runs skip installs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Stage commands in dvc.yaml call `python`; this makes it the project's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install browser lint repro data params test test-fast deploy-lambda rollback-lambda push pull report
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,aws]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) tracked-sample  ## create .venv, install coughlab (dev, aws extras); data/ if it is the sample

# Only the tests need a browser: tests/test_browser.py drives Debian's chromium through
# Playwright (no Playwright browser download needed). `make test` installs it when absent;
# repro, serve, deploy and the rest never do.
browser: $(CHROMIUM)  ## install Debian's chromium for tests/test_browser.py (make test does)
$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "no apt-get here: install Chromium as $(CHROMIUM), or tests/test_browser.py skips"; fi

# data/ is DVC-tracked (data.dvc) and fetch depends on it whichever data.sources are chosen, so
# a fresh clone (no DVC cache) needs it before `dvc repro` or `dvc exp run -S
# 'data.sources=[...]'`. install regenerates the embedded sample when data/ is missing and keeps
# it only if it is what data.dvc tracks; other data (yours) comes from your remote (make pull),
# which a sample left in its place would block.
.PHONY: tracked-sample
tracked-sample: | $(STAMP)
	@if [ ! -e data ]; then \
	  $(PY) -m coughlab.sample data && if ! dvc data status --json data | $(PY) -c \
	    'import json, sys; sys.exit(bool(json.load(sys.stdin).get("uncommitted")))'; then rm -rf data; \
	    echo "data.dvc tracks other data than the embedded sample: get it with make pull"; fi; \
	fi

data/labels.csv: | $(STAMP)
	$(PY) -m coughlab.sample data

data: data/labels.csv  ## regenerate the embedded sample in data/ if it is missing

repro: install data  ## run the whole pipeline (dvc repro) on the embedded default
	dvc repro
	@echo "Test metrics: reports/metrics.json (dvc metrics show); plots: dvc plots show"
	@# Last, so it is what the user reads: the headline and a WARNING when the model does not
	@# beat the metadata-only baseline within channels (printed even when evaluate was cached).
	@$(PY) -m coughlab.stages.evaluate --verdict

params: install  ## recompose params.yaml from conf/ after editing conf/ by hand (names what it reverts)
	$(PY) -m coughlab.promote --recompose

.PHONY: promote
promote: install  ## write params.yaml's values (an applied experiment's) into conf/, so they stay
	$(PY) -m coughlab.promote

test: install browser lint  ## lint, then the whole test suite, end-to-end runs included
	$(PY) -m pytest

test-fast: install lint  ## lint, then unit tests only (skips the fresh-clone end-to-end runs)
	$(PY) -m pytest -m "not slow"

lint: install  ## ruff over the code, tests and benchmarks ([tool.ruff] in pyproject.toml)
	$(PY) -m ruff check src lambda tests benchmarks

.PHONY: serve
PORT ?= 8000
serve: install  ## try the model before deploying: the recording page + API on 127.0.0.1:PORT (8000)
	$(PY) -m coughlab.serve --host 127.0.0.1 --port $(PORT)

deploy-lambda: install  ## gate the model, build the zip, publish it, smoke-test it, move alias `live`
	$(PY) -m coughlab.aws.deploy

rollback-lambda: install  ## move alias `live` back to the version it served before the last deploy
	$(PY) -m coughlab.aws.deploy --rollback

# The DVC remote is the user's own: none is committed. $COUGHLAB_DVC_REMOTE (an S3 URL) sets it
# for this clone (.dvc/config.local); without it and without a configured remote, say how.
define use_dvc_remote
	@if [ -n "$$COUGHLAB_DVC_REMOTE" ]; then \
		dvc remote add --local --force --default storage "$$COUGHLAB_DVC_REMOTE"; \
	elif ! dvc remote default >/dev/null 2>&1; then \
		echo "No DVC remote is configured: this project ships none, so your data goes only" >&2; \
		echo "to a bucket you own. Add one once (docs/pipeline.md: Remote storage):" >&2; \
		echo "    dvc remote add -d storage s3://<your-bucket>/coughlab" >&2; \
		echo "or export COUGHLAB_DVC_REMOTE=s3://<your-bucket>/coughlab (kept in .dvc/config.local)" >&2; \
		exit 2; \
	fi
endef

push: install  ## upload data and pipeline outputs to your DVC remote (dvc push)
	$(use_dvc_remote)
	dvc push

pull: install  ## fetch data and pipeline outputs from your DVC remote (dvc pull)
	$(use_dvc_remote)
	dvc pull

BASE ?= main
REV ?=
report: install  ## REV (the workspace) against BASE (main): headline, metrics, params, plot PNGs -> build/pr-report.md
	$(PY) -m coughlab.report --base $(BASE) $(if $(REV),--rev $(REV)) --out build/pr-report.md

# `dvc exp show` in 80 columns: the changed params beside the headline (wc_auc and its CI
# wc_lo..wc_hi) and the margin over the metadata baseline; DVC's other columns (creation time,
# the other metrics, every dependency's hash: names with a /) dropped (DVC matches these
# patterns from the start of a column's name). `dvc exp show` still has them all.
EXPS_DROP := Created|leak_neg|leak_pos|auc|pr_auc|sens|spec|.*/.*
.PHONY: exps plots
exps: install  ## experiments side by side: changed params and the headline with its CI, best first
	dvc exp show --no-pager --only-changed --drop '$(EXPS_DROP)' --keep 'wc_(auc|lo|hi)' \
	  --sort-by wc_auc --sort-order desc

REVS ?=
plots: install  ## DVC's plots as a page that renders offline -> build/plots/index.html (REVS="main exp" to compare)
	$(PY) -m coughlab.plots $(REVS)
