# Set-up and the two everyday commands. Everything lands in .venv; torch is pinned to one
# version through constraints.txt (pyproject.toml states the range users get).
# The set-up installs the package as users get it (not editable: a wheel with the weights
# inside). The tests still import the checkout's code (`python -m pytest` in the repository
# puts it first on sys.path), and `demo` reinstalls the package first, so both run the code
# as it is now; `make install` does that reinstall alone, for the `dirac` command in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# setuptools packs whatever an earlier build left in build/lib, deleted modules too: start clean
PIP_INSTALL := rm -rf build && $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: setup install demo test test-fast test-oldest lint gpu-kit

# A .venv whose own Python is older than 3.11 (made by hand, or before this check) is made
# again; any other is kept, with what its user installed in it
NEEDS_PYTHON := import sys; sys.exit(sys.version_info < (3, 11))
CHECK_PYTHON := $(PYTHON) -c '$(NEEDS_PYTHON)' || { \
  echo "make: diraccodec needs Python 3.11 or newer, which $(PYTHON) is not: name one, as in" \
  "make demo PYTHON=python3.11" >&2; exit 1; }

$(BIN)/dirac: pyproject.toml constraints.txt
	@$(CHECK_PYTHON)
	@if [ -e $(BIN)/python ] && ! $(BIN)/python -c '$(NEEDS_PYTHON)' 2>/dev/null; then \
	  echo "make: $(VENV) runs an older Python: making it again"; $(PYTHON) -m venv --clear $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) '.[dev]'
	touch $@

setup: $(BIN)/dirac

install: setup
	$(PIP_INSTALL) --no-deps .

demo: install
	mkdir -p out
	$(BIN)/dirac encode samples/parrots.png -q 3 -o out/parrots.drc
	$(BIN)/dirac info out/parrots.drc
	$(BIN)/dirac decode out/parrots.drc -o out/parrots.png

# one worker per core (pytest-xdist), each running torch in one thread (tests/conftest.py); a
# test file's tests stay together, so its fixtures are made once; the longest files start first
# (tests/conftest.py: LONGEST_FILES), in the order given there
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

test: setup
	$(BIN)/ruff check diraccodec tests scripts
	$(PYTEST)

# the fast tier, for every change: the tests not marked slow (2 min 18 s on 2 AVX2 cores)
test-fast: setup
	$(BIN)/ruff check diraccodec tests scripts
	$(PYTEST) -m "not slow"

# the fast tier with the oldest versions pyproject.toml allows (scripts/oldest_requirements.py;
# torch's too, a CUDA build of about 3 GB that runs on the CPU), in their own .venv-oldest:
# the stated floors tested. On the oldest Python, 3.11: newer ones have no wheels of some
# floors (ray 2.10, numpy 1.26)
OLDEST := .venv-oldest
OLDEST_PYTHON ?= python3.11
test-oldest:
	$(OLDEST_PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python scripts/oldest_requirements.py > $(OLDEST)/oldest.txt
	rm -rf build && $(OLDEST)/bin/python -m pip install --quiet -c $(OLDEST)/oldest.txt '.[dev]'
	$(OLDEST)/bin/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not slow"

lint: setup
	$(BIN)/ruff check diraccodec tests scripts

# What a GPU machine without network needs for training and the GPU check
# (docs/training-gpu.md): constriction's wheel for that machine's Python, the candidate's start
# (float16 weights and LPIPS VGG16), the training shard in one tar file, and Kodak. All of it
# is ignored by git; weights/, docs/ and tests/ stay behind for the training call.
GPU_PYTHON ?= 3.12
KIT := .gpu
# JPEG quality of the training shard: 65 where a larger start must fit too (docs/training-gpu.md)
SHARD_QUALITY ?= 70

gpu-kit: install
	rm -rf .whl $(KIT)/start $(KIT)/shard $(KIT)/shard.tar $(KIT)/kodak && mkdir -p $(KIT)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
	  $$(grep '^constriction==' constraints.txt)
	$(BIN)/python scripts/train_candidate.py pack $(KIT)/start
	$(BIN)/dirac train pack $(KIT)/shard --prescale 2 --quality $(SHARD_QUALITY)
	tar -cf $(KIT)/shard.tar -C $(KIT)/shard . && rm -rf $(KIT)/shard
	cp -r ../shared/data/kodak $(KIT)/kodak
	du -sh .whl $(KIT)/*
