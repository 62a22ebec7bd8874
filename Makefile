# make demo : create .venv, install, run the ShapesEval demo (SFT model -> UniGRPO, report).
# make test : create .venv, install the project with the pinned constraints, run the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean train-tiny

demo: $(VENV)/.installed
	$(BIN)/python launch/demo.py

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 tests

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV)

# The RL loop end to end on a random tiny Bagel (CPU, about a minute after the install).
train-tiny: $(VENV)/.installed
	$(BIN)/python launch/train.py --config=configs/bagel_grpo.py:tiny --workdir=runs/tiny
