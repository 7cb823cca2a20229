# dualtoken_lite: the two commands a newcomer needs are `make demo` and `make test`.
# Each sets up .venv on first use (a second run reuses it; it is rebuilt only when pyproject.toml changes).

PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# torch/torchvision pins that install and import together with open_clip, timm and lpips on these machines
# (a CPU-running CUDA build on x86_64; the same pins give a CUDA build on a GPU machine). Override to taste.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
# pytest workers for `make test`. Most of the unit tests' time is single-threaded Python (each command-line test
# starts a process that imports torch, timm and open_clip) and the notebooks compute on cores - 1 threads, so two
# workers on a 2-core CPU take about 0.56x the time of one. --dist loadfile keeps a test file (its module-scoped
# fixtures) and a notebook (its cells, in order, in one kernel) on one worker.
TEST_JOBS ?= 2
PYTEST_JOBS = -n $(TEST_JOBS) --dist loadfile

.PHONY: setup demo test lint unit notebooks publish bench data teacher clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[notebooks,dev,bench,hf]'
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv with everything the project needs

demo: $(STAMP)  ## the main job: train tiny DualToken on the bundled data (again: continue it or report it)
	$(PY) -m dualtoken_lite.train --preset tiny --out runs/demo --resume auto

test: lint unit notebooks  ## everything CI runs (the notebook-pairing check is a unit test)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP)
	$(VENV)/bin/pytest tests -q $(PYTEST_JOBS)

notebooks: $(STAMP)  ## all notebooks at their default settings: what a learner runs is what CI tests
	$(VENV)/bin/pytest -q --nbval-lax notebooks $(PYTEST_JOBS)

publish: $(STAMP)  ## execute every notebook at default settings into docs/notebooks/ (README links them)
	@mkdir -p docs/notebooks
	for nb in notebooks/[0-9][0-9]_*.py; do \
	  $(VENV)/bin/jupytext --to ipynb --execute --output docs/notebooks/$$(basename $$nb .py).ipynb $$nb || exit 1; \
	done

bench: $(STAMP)  ## the quantizer benchmark (see README)
	OMP_NUM_THREADS=2 $(PY) benchmarks/bench_quantizer.py

clean:
	rm -rf $(VENV) runs
