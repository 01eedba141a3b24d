# cvkit: `make test` runs the whole suite, `make demo` trains the demo model. Both set everything up
# first (virtual environment, cached mmcv build, embedded synthetic data) and skip what is done.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.cvkit-setup
DATA_STAMP := data/.complete
PYTEST_ARGS ?=

.PHONY: setup data test demo clean-data

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh $(VENV)
	touch $@

data: $(DATA_STAMP)

$(DATA_STAMP): $(SETUP_STAMP) cvkit/data/synthetic.py cvkit/data/shapes.py
	$(PY) -m cvkit.data.synthetic --out data
	touch $@

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup data
	$(PY) tools/train.py

clean-data:
	rm -rf data/classification data/detection $(DATA_STAMP)
