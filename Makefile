# The two commands of the README: `make run` and `make test`. Everything else is set-up they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp (~5 min on 2 cores). Only a portable build works on CPUs
# like this machine's: the native build dies on the first completion. The wheel is cached outside
# the checkout so that a fresh clone (and CI) reuses it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS ?= $(HOME)/.cache/reconciler/wheels

.PHONY: run test lint venv llama mutants

run: venv
	$(BIN)/reconciler validate desired-state
	$(BIN)/reconciler plan desired-state
	$(BIN)/reconciler run desired-state

test: venv
	$(BIN)/pytest

# Deliberate faults in a copy of the package, each of which the unit tests must catch.
mutants: venv
	$(BIN)/python tests/mutants/run.py

lint: venv
	$(BIN)/ruff check reconciler tests
	$(BIN)/ruff format --check reconciler tests
	$(BIN)/lint-imports
	$(BIN)/mypy

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(MAKE) llama
	touch $@

llama:
	@if $(BIN)/python -c "import llama_cpp" 2>/dev/null; then echo "llama-cpp-python present"; else \
	  mkdir -p $(WHEELS); \
	  if ! ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	    echo "building llama-cpp-python (portable CPU build, about 5 minutes)"; \
	    CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir -w $(WHEELS) "llama-cpp-python>=0.3"; \
	  fi; \
	  $(BIN)/pip install -q "$$(ls $(WHEELS)/llama_cpp_python-*.whl | tail -n 1)[server]"; \
	fi
