"""Run `opa test --coverage` on a directory and fail when coverage is below a floor.

`opa test` has no coverage threshold flag that also prints the failing files, so this wraps it:
it prints the per-file figures and exits 1 under the floor (or when a test fails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--min", type=float, default=90.0, help="minimum coverage percentage")
    args = parser.parse_args()
    opa = os.environ.get("HEXARCH_OPA") or shutil.which("opa") or ".tools/bin/opa"
    verbose = subprocess.run([opa, "test", "-v", args.path], capture_output=True, text=True)
    print(verbose.stdout[-4000:], end="")
    if verbose.returncode != 0:
        print(verbose.stderr, file=sys.stderr)
        print(f"opa test failed on {args.path}", file=sys.stderr)
        return 1
    cov = subprocess.run([opa, "test", "--coverage", args.path], capture_output=True, text=True, check=True)
    report = json.loads(cov.stdout)
    for name, info in sorted(report.get("files", {}).items()):
        print(f"  {info.get('coverage', 0):6.2f}%  {name}")
    total = float(report.get("coverage", 0.0))
    print(f"rego coverage: {total:.2f}% (floor {args.min:.0f}%)")
    return 0 if total >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
