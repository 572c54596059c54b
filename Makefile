# Day-to-day commands. `make test` is what CI runs; `make test-fast` is the loop while editing.
PYTHON = python3
LINTED = webapp tests bench migrations wsgi.py setup.py

.PHONY: fmt lint test-fast test

# Some machines (this project's CI image among them) switch bytecode caches off; every run
# would then recompile every module it imports, ~6 s of a test-fast run.
unexport PYTHONDONTWRITEBYTECODE

# Fixes first: a fix (an import sorted, say) can leave lines for the formatter.
fmt:
	$(PYTHON) -m ruff check --fix $(LINTED)
	$(PYTHON) -m ruff format $(LINTED)

lint:
	$(PYTHON) -m ruff check $(LINTED)
	$(PYTHON) -m ruff format --check $(LINTED)
	$(PYTHON) -m mypy

# Everything but the tests marked slow (workers, training, servers) and the browser, on
# both cores (pytest-xdist). pytest-benchmark, where installed, refuses to run beside xdist.
test-fast:
	$(PYTHON) -m pytest -m "not slow and not e2e" -n 2 --dist loadgroup -p no:benchmark

# The whole suite, as CI runs it: installs, services, lint, SQLite with the browser, PostgreSQL.
test:
	bash .ci/run
