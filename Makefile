# One command to install and start the gateway, one to install and run the tests.
#   make serve     install (first time) and start the gateway on http://127.0.0.1:8000
#   make test      install (first time) and run the test suite (what CI runs)
#   make test-quick  skip the slow cases
#   make test-bench  the bench scripts end to end (each in its own Ray cluster)
PYTHON ?= python3
VENV ?= .venv
PIP_FLAGS ?= -q
PROFILE ?= tiny
PORT ?= 8000
PYTEST_ARGS ?=
# `make test` (CI): everything but the bench smoke runs, each of which starts its own Ray
# cluster and production graph (~20 min together on 2 cores): `make test-bench` runs those.
MARK ?= not bench

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-quick test-bench lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -U pip setuptools wheel
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[tools,router,test]'
	# insightface without its opencv-python (GUI) dependency: one headless OpenCV only.
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt --no-deps 'insightface>=0.7'
	if $(BIN)/python -m pip show -q opencv-python 2>/dev/null; then \
	  $(BIN)/python -m pip uninstall -y -q opencv-python && \
	  $(BIN)/python -m pip install $(PIP_FLAGS) --force-reinstall --no-deps opencv-python-headless; \
	fi
	$(BIN)/python -c "import models, cv2, insightface, spandrel"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/photostudio serve --profile $(PROFILE) --port $(PORT)

# pytest's exit code 5 (no tests collected) is a failure, not a pass. --durations=25: the
# slowest cases in every CI log (the whole suite must stay within 30 min on a 2-core machine).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "$(MARK)" --durations=25 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	  exit $$rc

test-quick: MARK = not bench and not slow
test-quick: test

# the bench scripts end to end (bench/README.md): run them after changing a bench or what it
# drives; matting's needs the bench extra (make bench installs it)
test-bench: MARK = bench
test-bench: test

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/matting.py
	$(BIN)/python bench/upscale.py
	$(BIN)/python bench/router.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
