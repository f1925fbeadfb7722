# The two quick-start commands (see README). Both run the same idempotent set-up first.
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m refine.main

test: setup
	bash scripts/test.sh
