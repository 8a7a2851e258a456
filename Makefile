# The two commands of the README: `make serve` runs herd on its default model (SmolLM2-135M-Instruct,
# which the set-up fetches), `make test` runs lint and the tests. Both do all set-up themselves on a
# fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
HERD := $(VENV)/bin/herd
CPU_KERNEL_TESTS := $(addprefix tests/engine/test_,cpu_block_linear.py cpu_decoder.py \
	cpu_layer_ops.py cpu_paged_decode.py cpu_paged_prefill.py compiled.py) \
	tests/model/test_packed_linear.py

.PHONY: setup serve test lint format bench

setup:
	@bash scripts/setup.sh

serve: setup
	$(HERD) serve

test: setup
	@bash scripts/services.sh
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest
	HERD_EMULATED_CPU=avx2 $(PY) -m pytest -p tests.emulated_cpu $(CPU_KERNEL_TESTS)  # again, as on an AVX2 CPU
	HERD_EMULATED_CPU=avx512 $(PY) -m pytest -p tests.emulated_cpu $(CPU_KERNEL_TESTS)  # and AVX-512, no BF16
	$(PY) -m pytest -m slow  # the slow tier (a real Ray cluster): part of CI all the same

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks
