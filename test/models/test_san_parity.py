"""SAN against the authors' golden outputs (shared/fixtures), end to end on CPU.

Each case rebuilds its seeded weights and runs our full model; ViT-L takes about a minute.
"""

from pathlib import Path

import pytest

from ovseg_ros.commands.check_parity import run_case

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@pytest.mark.parametrize("case", ["san_b_seed1", "san_l_seed1"])
def test_san_matches_reference(case):
    case_dir = FIXTURES / case
    if not (case_dir / "case.json").is_file():
        pytest.fail(f"parity fixture missing: {case_dir} (expected the team's shared/fixtures beside the repo)")
    checks = run_case(case_dir)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert checks and not failed, f"{case}: " + "; ".join(failed)
