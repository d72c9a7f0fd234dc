"""Check our models against a parity case of the authors' code.

    python -m ovseg_ros.commands.check_parity CASE_DIR [CASE_DIR ...] [--device cuda] [--precision bf16]

A case folder holds ``case.json``, ``arrays.npz`` and ``image.png`` (format described in
the team's ``shared/fixtures/README.md``). The model family comes from the case's
``variant`` (``sed_*`` or ``san_*``); its ``parity.run_case`` rebuilds the seeded weights,
runs our implementation and returns arrays named as in ``arrays.npz``.
The weights are rebuilt by the fixtures' own ``seeded_weights.py`` (found in the case
folder or a parent of it, beside ``manifests/``). Every reference
array is compared and reported with its max abs diff and PASS/FAIL:

* float arrays: max abs diff within the case's suggested CPU fp32 tolerance;
* integer arrays (CER kept-class ids): exactly equal;
* ``*_argmax`` maps: agreement fraction >= 0.99 (near-ties may flip).

``--precision fp32`` (default) means fp32 on CUDA too: TF32 matmuls and convolutions are
switched off. ``--precision bf16`` runs the case under ``torch.autocast(dtype=bfloat16)``,
as :class:`~ovseg_ros.engine.segmenter.Segmenter` does, and judges float arrays by the GPU
tolerance the fixtures state (README, ``case.json`` ``suggested_tolerance.note``: "~1e-2
(probabilities) or a relative check"): max abs diff <= 1e-2 x max(1, max |reference|),
which is 1e-2 on probabilities and 1% of the array's range on larger-valued ones; the
argmax and kept-id rules stay as above.

Exits 1 when any array fails, 2 when a case cannot be run at all.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ARGMAX_MIN_AGREEMENT = 0.99
#: bf16 tolerance relative to max(1, max |reference|), from the fixtures' GPU guidance (module docstring).
BF16_RELATIVE_TOLERANCE = 1e-2
PRECISIONS = ("fp32", "bf16")
# Inputs stored for reproducibility, not outputs to compare.
INPUT_ARRAYS = {"image_input_u8"}


@dataclass
class ArrayCheck:
    name: str
    passed: bool
    detail: str


def compare_arrays(case: dict, reference: dict[str, np.ndarray], ours: dict[str, np.ndarray], precision: str = "fp32") -> list[ArrayCheck]:
    """Compare every reference output array with ours; see the module docstring for the rules."""
    tolerances = case.get("suggested_tolerance", {}).get("atol_cpu_fp32", {})
    checks = []
    for name, ref in reference.items():
        if name in INPUT_ARRAYS:
            continue
        if name not in ours:
            checks.append(ArrayCheck(name, False, "not computed by our implementation"))
            continue
        mine = np.asarray(ours[name])
        if mine.shape != ref.shape:
            checks.append(ArrayCheck(name, False, f"shape {mine.shape} != reference {ref.shape}"))
        elif name.endswith("argmax"):
            agreement = float((mine == ref).mean())
            checks.append(ArrayCheck(name, agreement >= ARGMAX_MIN_AGREEMENT, f"agreement {agreement:.5f} (min {ARGMAX_MIN_AGREEMENT})"))
        elif np.issubdtype(ref.dtype, np.integer):
            equal = bool(np.array_equal(mine, ref))
            checks.append(ArrayCheck(name, equal, "identical" if equal else f"ours {mine.tolist()} != reference {ref.tolist()}"))
        else:
            diff = float(np.abs(mine.astype(np.float64) - ref.astype(np.float64)).max())
            scale = max(1.0, float(np.abs(ref).max()))
            if precision == "bf16":
                atol = BF16_RELATIVE_TOLERANCE * scale
            else:
                atol = float(tolerances.get(name, 1e-4 * scale))
            checks.append(ArrayCheck(name, diff <= atol, f"max abs diff {diff:.3e} (atol {atol:.0e})"))
    return checks


def seeded_state_dict(case: dict, case_dir: Path) -> dict:
    """The case's stand-in weights, keyed as in the official checkpoint.

    Uses ``seeded_weights.py`` and ``manifests/`` from the nearest folder at or above
    ``case_dir`` that has them: the rule belongs to the fixtures, not to us.
    """
    for root in (case_dir, *case_dir.resolve().parents):
        rule = root / "seeded_weights.py"
        if rule.is_file() and (root / "manifests" / case["manifest"]).is_file():
            break
    else:
        raise ValueError(f"{case_dir}: no seeded_weights.py with manifests/{case['manifest']} at or above it")
    spec = importlib.util.spec_from_file_location("seeded_weights", rule)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state_dict(str(root / "manifests" / case["manifest"]), seed=case["seed"])


def run_case(case_dir: Path, device: str = "cpu", precision: str = "fp32") -> list[ArrayCheck]:
    """Run our implementation on one case folder (``precision`` fp32 or bf16) and compare it with the stored arrays."""
    case = json.loads((case_dir / "case.json").read_text())
    family = case["variant"].split("_", 1)[0]
    try:
        parity = importlib.import_module(f"ovseg_ros.commands.parity_{family}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"{case_dir}: no implementation for variant {case['variant']!r}") from exc
    with np.load(case_dir / "arrays.npz") as npz:
        reference = {name: npz[name] for name in npz.files}
    ours = parity.run_case(case, reference["image_input_u8"], seeded_state_dict(case, case_dir), device=device, precision=precision)
    return compare_arrays(case, reference, ours, precision)


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` for the parity tools (bf16, or none for fp32)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Host numpy copy; bf16 (no numpy dtype) as float32."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).cpu().numpy()


def strict_fp32(device: str) -> None:
    """No TF32 on CUDA: fp32 matmuls and convolutions in fp32, as the fixtures were made."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", type=Path, help="case folders (case.json, arrays.npz, image.png)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (no TF32 on CUDA; the cases' CPU fp32 tolerances) or bf16 (autocast; the GPU tolerance)")
    args = parser.parse_args(argv)
    if args.precision == "fp32":
        strict_fp32(args.device)
    else:  # the run-time default: TF32 where torch allows it by default, around what autocast keeps in fp32
        print(f"precision bf16 (autocast): float arrays within {BF16_RELATIVE_TOLERANCE:.0e} x max(1, max |reference|)")

    failed = False
    for case_dir in args.cases:
        print(f"== {case_dir}")
        try:
            checks = run_case(case_dir, args.device, args.precision)
        except (OSError, ValueError, KeyError) as exc:
            print(f"ERROR  {exc}")
            return 2
        for check in checks:
            print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<24} {check.detail}")
        failed |= not all(c.passed for c in checks)
    print("parity: FAIL" if failed else "parity: PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
