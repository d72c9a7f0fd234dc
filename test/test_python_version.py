"""The package runs on the oldest Python that setup.py declares (python_requires >= 3.10):
vermin finds no construct or library use in ovseg_ros or ovseg_dev that needs a newer one
(tomllib, except*, enum.StrEnum, typing.Self, ...), while development happens on 3.11."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERMIN = ["--target=3.10-", "--no-tips", "--violations", "ovseg_ros", "ovseg_dev"]


def test_vermin_finds_nothing_that_needs_more_than_python_3_10():
    run = subprocess.run([sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())", *VERMIN],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "No module named 'vermin'" not in run.stderr, "vermin is not installed: run scripts/setup.sh (requirements/common.txt pins it)"
    violations = [line for line in run.stdout.splitlines() if line.startswith("!") or "requires" in line]
    assert run.returncode == 0 and not violations and "Target versions not met" not in run.stdout, run.stdout + run.stderr
    assert "Analyzing" in run.stdout, run.stdout + run.stderr  # it did look at the files
