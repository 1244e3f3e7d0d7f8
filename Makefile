# The two commands of the README. Both set up everything that is missing first.
.PHONY: run test setup

setup:
	@scripts/bootstrap.sh

run: setup
	.venv/bin/speakerops demo

# The core's tests run in one process without Qt windows (HOUSE_STYLE); each console test file
# (pytest-qt, offscreen) runs in a process of its own. (Many windows in one process used to crash
# or deadlock now and then: Python's garbage collector destroyed Qt objects on job threads. It now
# runs on the GUI thread only, console.app.collect_garbage_on_gui_thread; all console files pass
# in one process too. Separate processes are kept as a guard.)
test: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check speakerops fleet feedback inference_core console tests benchmarks
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -q -p no:cacheprovider --ignore-glob='tests/test_console*.py' $(PYTEST_ARGS)
	set -e; for f in tests/test_console*.py; do \
	  QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -q -p no:cacheprovider $$f $(PYTEST_ARGS); \
	done
