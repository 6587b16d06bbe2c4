# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
DEMO_DIR ?= demo

.PHONY: venv demo test lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The stubs pin tensorrt itself, which only NVIDIA's index serves: take the stubs alone.
	$(BIN)/python -m pip install -q --no-deps "$(TRT_STUBS)"
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy --strict export/tensorrt_build.py runtime/trt_backend.py

test: venv lint typecheck
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/crl-sim rollout reacher --episodes 2 --video $(DEMO_DIR)/reacher_random.mp4 --frames $(DEMO_DIR)/reacher_random.png

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
