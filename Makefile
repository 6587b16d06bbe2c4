# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv themselves;
# `make test` also builds .venv310, the robot's install on Python 3.10 (`make test-robot`).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
# What mypy reads (MYPYPATH): the repaired TensorRT stubs and a crl link tree, crl/<stage> ->
# the stage folder, generated from pyproject's package-dir (tests/crl_link_tree.py). The
# editable install maps crl.* to the folders through an import hook that mypy does not run (it
# finds no crl), and no other install mode serves both mypy and the dev loop (measured with
# setuptools 84, mypy 2.4): editable_mode=strict links each file into build/, so a new module
# is missing, to Python and mypy alike, until the next reinstall; editable_mode=compat puts
# the repository root on sys.path, which gives top-level sim, train, ... and no crl at all.
# mypy's own mypy_path and explicit_package_bases cannot rename a folder. The links are to
# folders, so new modules are seen at once; errors name files by their link path.
TYPESTUBS := $(VENV)/typestubs
TYPESTAMP := $(TYPESTUBS)/.ready
DEMO_DIR ?= demo
# The robot's install on the Python a robot has (3.10: JetPack 6, ROS 2 Humble): the plain
# install with the cpu and test extras, no jax. pyenv's 3.10 where present (its shims pick a
# version per folder), else python3.10 on PATH; `make test-robot` skips, saying so, without one.
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHON310 ?= $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.10.*/bin/python3.10))),python3.10)
VENV310 := .venv310
STAMP310 := $(VENV310)/.installed
# The same install with numpy 1.x, as on a robot whose ROS comes from apt (Ubuntu 24.04's
# numpy 1.26; rosidl's C typesupport is built against it) or a JetPack 6 container.
NUMPY1 := numpy==1.26.*
VENV310_NUMPY1 := .venv310-numpy1
STAMP310_NUMPY1 := $(VENV310_NUMPY1)/.installed
# The runtime's tests (spec, backends, the policy file's seal, input checks, robot configs, bench,
# controller, transport, keys, closed loop, atomic writes, the command lines, the install
# itself); what needs jax in them skips there, saying so.
ROBOT_TESTS := tests/test_install.py tests/test_runtime.py tests/test_spec.py tests/test_tensorrt.py \
  tests/test_atomic.py tests/test_cli.py tests/test_seal.py tests/test_robot_config.py \
  tests/test_auth.py $(wildcard tests/test_controller*.py tests/test_transport.py tests/test_closed_loop.py)

.PHONY: venv demo test test-robot test-gpu-smoke lint typecheck clean

# The workstation: every stage, ONNX Runtime for the CPU (never both it and the gpu extra), and
# ROS 2 Jazzy's rclpy and messages as wheels for the ROS package's tests (one venv: the wheels'
# bootstrapper adds ~30 ms to each Python start, which the tests can afford).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,train,dev,ros]"
	# The stubs pin tensorrt itself, which only NVIDIA's index serves: take the stubs alone.
	$(BIN)/python -m pip install -q --no-deps "$(TRT_STUBS)"
	touch $@

$(TYPESTAMP): $(STAMP) pyproject.toml tests/tensorrt_stubs.py tests/crl_link_tree.py
	$(BIN)/python tests/tensorrt_stubs.py \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" $(TYPESTUBS)
	$(BIN)/python tests/crl_link_tree.py $(TYPESTUBS)
	touch $@

# Rebuilt only when pyproject.toml changes; editable, so the tests run the working tree's code.
# The venv ignores itself in git, as Python 3.13's venv does.
$(STAMP310): pyproject.toml
	test -x $(VENV310)/bin/python || $(PYTHON310) -m venv $(VENV310)
	echo '*' > $(VENV310)/.gitignore
	$(VENV310)/bin/python -m pip install -q --upgrade pip
	$(VENV310)/bin/python -m pip install -q -e ".[cpu,test]"
	touch $@

$(STAMP310_NUMPY1): pyproject.toml
	test -x $(VENV310_NUMPY1)/bin/python || $(PYTHON310) -m venv $(VENV310_NUMPY1)
	echo '*' > $(VENV310_NUMPY1)/.gitignore
	$(VENV310_NUMPY1)/bin/python -m pip install -q --upgrade pip
	$(VENV310_NUMPY1)/bin/python -m pip install -q -e ".[cpu,test]" "$(NUMPY1)"
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

# The whole crl package, with pyproject's [tool.mypy] settings (strict; the exceptions are
# listed and explained there).
typecheck: $(TYPESTAMP)
	MYPYPATH=$(TYPESTUBS) $(BIN)/mypy -p crl

# The quickstart policy the closed-loop tests run (trained and exported with the repo's own
# commands, as `make demo` does), rebuilt when the code that makes it changes.
TEST_POLICY_DIR := build/test-policy
TEST_POLICY := $(TEST_POLICY_DIR)/reacher.onnx
POLICY_SOURCES := $(wildcard core/*.py sim/*.py sim/tasks/*.py sim/assets/*.xml train/*.py export/*.py)

$(TEST_POLICY): $(STAMP) $(POLICY_SOURCES)
	rm -rf $(TEST_POLICY_DIR)
	$(BIN)/crl-train reacher --preset quick --out $(TEST_POLICY_DIR)/reacher > /dev/null
	$(BIN)/crl-export onnx --run $(TEST_POLICY_DIR)/reacher --best --out $@

# The suite in two passes: every test but the real-time ones on all cores (pytest-xdist, one
# worker a core, whole files a worker so module fixtures compile once), then the real-time ones
# (control loops and robots at rate, in their own processes) with nothing beside them.
TEST_WORKERS ?= auto

test: venv lint typecheck $(TEST_POLICY)
	CRL_DEMO_POLICY=$(TEST_POLICY) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
	  -m "not realtime"
	CRL_DEMO_POLICY=$(TEST_POLICY) $(BIN)/python -m pytest -m realtime
	$(MAKE) --no-print-directory test-gpu-smoke
	CRL_ROS_POLICY=$(CURDIR)/$(TEST_POLICY) CRL_ROS_DOC=$(CURDIR)/docs/ros2.md ros2_ws/test.sh $(BIN)
	$(MAKE) --no-print-directory test-robot

# bench/gpu.sh, the first lent GPU's run, at toy sizes on this machine (about 80 s of CPU time;
# results in a temporary folder): what needs a GPU, TensorRT or warp reports itself
# unavailable, and a step that crashes, fails or times out fails this target.
test-gpu-smoke: venv
	bash bench/gpu.sh --smoke --python $(BIN)/python

# The runtime's tests on Python 3.10 without the train extra: what a Jetson or a ROS 2 Humble
# machine installs, with the newest numpy 2.x and again with numpy 1.26. Its policies are
# exported there (export needs only numpy and onnx).
test-robot:
	@if $(PYTHON310) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then \
	  $(MAKE) --no-print-directory $(STAMP310) $(STAMP310_NUMPY1) \
	  && $(VENV310)/bin/python -m pytest $(ROBOT_TESTS) \
	  && $(VENV310_NUMPY1)/bin/python -m pytest $(ROBOT_TESTS); \
	else \
	  echo "test-robot: skipped: no Python 3.10 here ($(PYTHON310) is not one);" \
	    "set PYTHON310=/path/to/python3.10"; \
	fi

# The pipeline on the CPU: train reacher (quick preset), evaluate it on fresh goals and render
# it, export the actor to ONNX, measure its latency the way a robot would run it, and run it in
# the closed loop: the runtime driving the MuJoCo sim robot under held-out dynamics, 20 goals.
# The run directory holds the checkpoints, eval.json and learning_curve.png.
demo: venv
	rm -rf $(DEMO_DIR)/reacher
	$(BIN)/crl-train reacher --preset quick --out $(DEMO_DIR)/reacher
	$(BIN)/crl-train eval --run $(DEMO_DIR)/reacher --episodes 128 \
	  --video $(DEMO_DIR)/reacher_eval.mp4 --frames $(DEMO_DIR)/reacher_eval.png
	$(BIN)/crl-export onnx --run $(DEMO_DIR)/reacher --best --out $(DEMO_DIR)/reacher.onnx
	$(BIN)/crl-run bench --policy $(DEMO_DIR)/reacher.onnx --backend ort --batch 1 \
	  --out $(DEMO_DIR)/reacher_latency.json --plot $(DEMO_DIR)/reacher_latency.png
	$(BIN)/crl-run closed-loop --policy $(DEMO_DIR)/reacher.onnx --task reacher --dr held-out \
	  --seed 0 --goals 20 --out $(DEMO_DIR)/reacher_closed_loop.json
	@echo "demo: learning curve $(DEMO_DIR)/reacher/learning_curve.png," \
	  "episodes $(DEMO_DIR)/reacher_eval.mp4, policy $(DEMO_DIR)/reacher.onnx"

clean:
	rm -rf $(VENV) $(VENV310) $(VENV310_NUMPY1) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
