# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
# What mypy reads (MYPYPATH): the repaired TensorRT stubs and a crl link tree, since the
# editable install maps crl.* to the stage folders through an import hook mypy cannot follow.
TYPESTUBS := $(VENV)/typestubs
TYPESTAMP := $(TYPESTUBS)/.ready
DEMO_DIR ?= demo

.PHONY: venv demo test lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The stubs pin tensorrt itself, which only NVIDIA's index serves: take the stubs alone.
	$(BIN)/python -m pip install -q --no-deps "$(TRT_STUBS)"
	touch $@

$(TYPESTAMP): $(STAMP) tests/tensorrt_stubs.py
	$(BIN)/python tests/tensorrt_stubs.py \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" $(TYPESTUBS)
	mkdir -p $(TYPESTUBS)/crl
	for stage in sim train export runtime; do ln -sfn ../../../$$stage $(TYPESTUBS)/crl/$$stage; done
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: $(TYPESTAMP)
	MYPYPATH=$(TYPESTUBS) $(BIN)/mypy --strict -m crl.export.tensorrt_build -m crl.runtime.trt_backend

test: venv lint typecheck
	$(BIN)/python -m pytest

# The pipeline on the CPU: train reacher (quick preset), evaluate it on fresh goals and render
# it, export the actor to ONNX, and measure its latency the way a robot would run it. The run
# directory holds the checkpoints, eval.json and learning_curve.png.
demo: venv
	rm -rf $(DEMO_DIR)/reacher
	$(BIN)/crl-train reacher --preset quick --out $(DEMO_DIR)/reacher
	$(BIN)/crl-train eval --run $(DEMO_DIR)/reacher --episodes 128 \
	  --video $(DEMO_DIR)/reacher_eval.mp4 --frames $(DEMO_DIR)/reacher_eval.png
	$(BIN)/crl-export onnx --run $(DEMO_DIR)/reacher --out $(DEMO_DIR)/reacher.onnx
	$(BIN)/crl-run bench --policy $(DEMO_DIR)/reacher.onnx --backend ort --batch 1 \
	  --out $(DEMO_DIR)/reacher_latency.json --plot $(DEMO_DIR)/reacher_latency.png
	@echo "demo: learning curve $(DEMO_DIR)/reacher/learning_curve.png," \
	  "episodes $(DEMO_DIR)/reacher_eval.mp4, policy $(DEMO_DIR)/reacher.onnx"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
