# Set-up and the two everyday commands. Everything lands in .venv; torch is pinned to the
# CPU build through constraints.txt (pyproject.toml states the range users get).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/dirac: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/dirac

demo: setup
	mkdir -p out
	$(BIN)/dirac encode samples/parrots.png -q 3 -o out/parrots.drc
	$(BIN)/dirac info out/parrots.drc
	$(BIN)/dirac decode out/parrots.drc -o out/parrots.png

test: setup
	$(BIN)/ruff check diraccodec tests scripts
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check diraccodec tests scripts
