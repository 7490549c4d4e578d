# robodream: `make demo` runs the main job, `make test` runs the test suite.
# Both install what they need first (Debian packages for headless rendering, a .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install-system-deps.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"robodream needs Python 3.11, {sys.executable} is {sys.version.split()[0]}"'
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (CPU wheel here); an unpinned torch would pull CUDA packages.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/robodream demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/robodream bench policy --out benchmarks/policy.json

clean:
	rm -rf $(VENV) outputs
