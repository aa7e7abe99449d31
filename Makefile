# Outlier Book. Two commands matter (see README.md):
#   make book   install everything into .venv, execute every chapter (quick profile), build the HTML
#   make test   unit tests, execute every chapter (quick), nbval re-run, build the HTML, read it in a browser
PYTHON  ?= python3
PROFILE ?= quick
# Chapters one at a time with every thread. JOBS=N runs N side by side with OUTLIERBOOK_THREADS / N threads each
# (src/outlierbook/side_by_side.py): worth it with more cores; on 2 cores it saved only ~5 % of the quick build
# (every chapter ran ~1.7 times slower at one thread). nbval re-runs each notebook at the count it was executed with.
JOBS    ?= 1
VENV    := .venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python

# Reproducible numbers: fixed threads and hashing, offline Hugging Face (unless OUTLIERBOOK_ONLINE=1).
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
ifneq ($(OUTLIERBOOK_ONLINE),1)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif

.PHONY: install book test unit prepare execute check nbval html browser clean full

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(BIN)/.installed

prepare: install
	$(PY) -m outlierbook prepare --profile $(PROFILE)

execute: install
	$(PY) -m outlierbook run all --profile $(PROFILE) --jobs $(JOBS)

check: install
	$(PY) -m outlierbook check --profile $(PROFILE)

html: install
	$(PY) -m outlierbook book --profile $(PROFILE)
	@echo "The book is at _build/html/index.html"

book: execute html

# The built book in headless Chromium, offline (needs Debian's chromium, or OUTLIERBOOK_CHROMIUM).
browser: install
	$(PY) -m pytest tests/browser -q

unit: install
	$(PY) -m pytest tests/unit -q -m "not slow"; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc
	$(PY) -m pytest tests/unit -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc

nbval: install
	OUTLIERBOOK_TEST=1 $(PY) -m outlierbook validate --jobs $(JOBS)

test: export OUTLIERBOOK_TEST := 1
test: unit execute check nbval html browser

full:  # full profiles are long: one at a time, each with every thread
	$(MAKE) book PROFILE=full JOBS=1

clean:
	rm -rf _build notebooks/*.ipynb
