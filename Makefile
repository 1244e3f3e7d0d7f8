# The two commands of the README. Both set up everything that is missing first.
.PHONY: run test setup lint

setup:
	@scripts/bootstrap.sh

run: setup
	.venv/bin/speakerops demo

test: setup
	.venv/bin/lint-imports
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
