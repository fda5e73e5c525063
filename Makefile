# The README's two commands: `make demo` and `make test`.
.PHONY: setup setup-dev demo test lint bench

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh dev

demo: setup
	.venv/bin/animatediff generate "a red circle moving right on a blue background" -o demo.gif

test: setup-dev
	.venv/bin/python -m pytest -q

lint: setup-dev
	.venv/bin/ruff check src tests bench
