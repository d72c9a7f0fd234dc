"""SED against the authors' code: every visible parity case, end to end.

Each case rebuilds the seeded stand-in weights, runs our SED (own text features included)
and compares every stored array within the case's CPU fp32 tolerances. About a minute per
case on a laptop CPU (the 80-template text encoding dominates).
"""

import pytest

from ovseg_ros.commands import check_parity

CASES = ["sed_b_seed1", "sed_b_seed1_cer24", "sed_l_seed1"]


@pytest.mark.parametrize("case", CASES)
def test_sed_matches_reference(fixtures_dir, case):
    case_dir = fixtures_dir / case
    if not (case_dir / "case.json").is_file():
        pytest.fail(f"parity case missing: expected {case_dir}")
    checks = check_parity.run_case(case_dir)
    failures = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert checks and not failures, "\n".join(failures)
