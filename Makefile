# The two commands that set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint typecheck bench man mutate clean

# The virtual environment, with crtool and the test tools installed into it.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python demo/run.py

test: $(BIN)/.installed
	$(BIN)/ruff check crtool tests migrations bench demo
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check crtool tests migrations bench demo

typecheck: $(BIN)/.installed
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m bench

# Mutation testing of policy, tokens, addresses, service and maildir (pyproject's [tool.mutmut]
# names the tests). Not part of `make test` or CI: about an hour on two cores (docs/testing.md).
MUTATE_CHILDREN ?= 2
mutate: $(BIN)/.installed
	$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN)
	$(BIN)/mutmut results

# crtool(1) from the argparse parser (tests/unit/test_manpage.py fails when it is stale).
man: $(BIN)/.installed
	$(BIN)/python -m crtool.manpage man/crtool.1

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache .mypy_cache .hypothesis mutants
