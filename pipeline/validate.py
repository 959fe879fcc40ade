"""Stage validate: check the whole params file before any stage removes its outputs.

Every stage depends on this stage's output, so DVC runs it first. Its output never changes
while the params are valid, so it triggers no re-run; a bad file stops `dvc repro` here with
one line that names the key, and every output already produced stays in place.
"""
import argparse
import sys
from pathlib import Path

from condpdiff.config import ConfigError, load_params

VALID = "the params file is valid\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        load_params(args.params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(VALID)
    return 0


if __name__ == "__main__":
    sys.exit(main())
