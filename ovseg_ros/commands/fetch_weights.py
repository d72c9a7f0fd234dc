"""Download the authors' checkpoints into the weights folder, verified and converted to safetensors.

    python -m ovseg_ros.commands.fetch_weights sed_convnext_base [san_vit_b_16 ...]
    python -m ovseg_ros.commands.fetch_weights sed_convnext_base --file ~/Downloads/sed_model_base.pth

Each model's release (``ovseg_ros/models/weights.py``, ``RELEASES``): SAN from the authors'
Hugging Face repository (``huggingface_hub``; ``HF_ENDPOINT`` selects a mirror), SED from
the authors' Google Drive. A transfer cut short resumes where it stopped. The file is
checked (size and sha256 once recorded, a safe read, every key and shape by building the
model) and written as ``<weights folder>/<model>.safetensors``, which the node, label_bag
and the benchmarks then load memory-mapped. ``--file`` verifies and converts a checkpoint
downloaded by hand instead. A model already there is left as it is (``--force`` redoes it).

Exits 0 when every model is there, 1 when any failed (one line each, on stderr).
"""

from __future__ import annotations

import argparse
import sys

from ovseg_ros.models import weights_dir
from ovseg_ros.models.checkpoint import CheckpointError
from ovseg_ros.models.weights import RELEASES, fetch_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ovseg_ros.commands.fetch_weights",
        description=f"Download the authors' checkpoints into {weights_dir()} ($OVSEG_WEIGHTS_DIR), verified, as .safetensors.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", choices=sorted(RELEASES), help=f"one or more of: {', '.join(RELEASES)}")
    parser.add_argument("--file", help="a checkpoint downloaded by hand: verify and convert it instead of downloading (one MODEL)")
    parser.add_argument("--force", action="store_true", help="verify and convert again even when the model's .safetensors is there")
    args = parser.parse_args(argv)
    if args.file and len(args.models) != 1:
        parser.error("--file goes with exactly one MODEL")

    failed = 0
    for model in args.models:
        try:
            path = fetch_weights(model, file=args.file, force=args.force, log=print)
        except CheckpointError as error:
            print(f"fetch_weights: {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f"{model}: ready at {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
