# Two commands for a fresh machine: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PACKAGES := packages/common packages/diffusion_transformer packages/gpt_checkpoints packages/gangealing
PYTEST_ARGS ?=
# One pytest worker per core; a file's tests stay on one worker (they share its fixtures).
PYTEST_PARALLEL ?= -n auto --dist loadfile

.PHONY: install demo test test-all bench lint clean

# torch/torchvision are pinned through constraints.txt (CPU-usable builds from the mirror);
# the packages themselves only ask for torch>=2.3 so GPU users keep their own builds.
$(STAMP): constraints.txt $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt $(foreach p,$(PACKAGES),-e $(p)[test])
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_SILENT=true $(PY) -m diffusion_transformer.train

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow and not gpu" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-all: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -m "not gpu" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: $(STAMP)
	@for script in benchmarks/[!_]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check packages tests benchmarks
	$(PY) -m ruff format --check packages tests benchmarks

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
