# The README's two commands. Each does all set-up on a fresh clone (scripts/setup.sh is
# quick when nothing changed). On ROS 2 Jazzy; `make test ROS_DISTRO=kilted` (a command-line
# variable reaches the scripts' environment) sets up and runs on Kilted instead. ARGS goes to
# pytest: options, or test paths instead of the whole suite (setup.cfg's testpaths).
SHELL := /bin/bash
ACTIVATE := source scripts/activate.sh

.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ACTIVATE) && python -m ovseg_ros.commands.demo $(ARGS)

test: setup
	@$(ACTIVATE) && ruff check . && python -m pytest $(ARGS)
