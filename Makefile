# `make demo` and `make test` each create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pinned pair installs from wheels where a local wheel cache provides them; any
# torch >= 2.1 with its matching torchvision works.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Empty: torch and torchvision from the default index (on Linux the CUDA build, about 4 GB of
# CUDA libraries and triton in the environment). `make venv-cpu` sets it to PyTorch's CPU
# wheel index instead.
TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: venv venv-cpu demo example sensitivity test test-slow bench lint clean mutate

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# The same environment with the CPU-only torch build: run it before `make demo` or `make test`
# on a fresh checkout (or after `make clean`); they then reuse it.
venv-cpu:
	$(MAKE) --no-print-directory venv TORCH_INDEX=$(TORCH_CPU_INDEX)

# Each step says how long it took (the first `make demo` spends most of it installing torch).
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory venv; echo "make demo: environment ready in $$(( $$(date +%s) - start )) s"
	@start=$$(date +%s); $(BIN)/hashbench run --methods lsh,pcah,itq,sh --bits 16,32,64 --results results/demo; echo "make demo: runs in $$(( $$(date +%s) - start )) s"
	@start=$$(date +%s); $(BIN)/hashbench report --results results/demo --out reports/demo; echo "make demo: report in $$(( $$(date +%s) - start )) s"

# The example report, its run records and the README's numbers (about 15-20 minutes on 2 cores).
EXAMPLE_METHODS := lsh,pcah,itq,sh,cibhash,clhash,tbh,bgan,greedyhash,bihalf
example: venv
	$(BIN)/hashbench run --methods $(EXAMPLE_METHODS) --bits 16,32,64 --seeds 0,1,2 --results reports/digits/results --jobs 2
	$(BIN)/hashbench report --results reports/digits/results --out reports/digits
	$(BIN)/python tools/readme_numbers.py

# CIBHash's sensitivity (β, τ) and ablation (CLHash, the stochastic layer) on digits, their run
# records and reports beside the example (about 10 minutes on 2 cores).
SENSITIVITY_GRIDS := digits-sensitivity digits-ablation
sensitivity: venv
	@for grid in $(SENSITIVITY_GRIDS); do \
		$(BIN)/hashbench run --config experiments/$$grid.toml --jobs 2 && \
		$(BIN)/hashbench report --results reports/$$grid/results --out reports/$$grid || exit 1; \
	done

# The suite without the tests marked slow (under ten minutes on 2 cores); test-slow runs those.
test: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: venv
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no test is marked slow

bench: venv
	$(BIN)/python benchmarks/bench_metrics.py

# Curated mutations of the core, each against its tests (about 15 minutes on 2 cores).
mutate: venv
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

lint: venv
	$(BIN)/ruff check hashbench methods datasets tests benchmarks tools

clean:
	rm -rf $(VENV) results/demo reports/demo cibhash_gpu.json build dist *.egg-info
