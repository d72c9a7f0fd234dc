# The README's two commands. Each does all set-up on a fresh clone (scripts/setup.sh is
# quick when nothing changed). On ROS 2 Jazzy; `make test ROS_DISTRO=kilted` (a command-line
# variable reaches the scripts' environment) sets up and runs on Kilted instead.
SHELL := /bin/bash
ACTIVATE := source scripts/activate.sh

.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ACTIVATE) && python -m ovseg_ros.commands.demo $(ARGS)

# TESTS: which tests (default all); JOBS: pytest-xdist workers, each taking whole files (their
# module fixtures start one node each); ARGS: more pytest options.
TESTS ?= test
JOBS ?= 2

test: setup
	@$(ACTIVATE) && ruff check . && python -m pytest -n $(JOBS) --dist loadfile $(TESTS) $(ARGS)
