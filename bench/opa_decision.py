"""What one decision costs OPA: `python -m bench.opa_decision` (`make bench-decision`).

Compiles the policy (default examples/hexarch.yaml) into a bundle and runs `opa bench` on
`data.hexarch.decision` for bench/decision_input.json (a chat request by an API-key principal to
tinyllama), with the read-optimised store the OPA server runs with (`hexarch up` passes
--optimize-store-for-read-speed) and with the default store, alternating the two `--rounds` times.
Prints one JSON document: per store mode the median over rounds of opa bench's median
evaluation time (`histogram_timer_rego_query_eval_ns_median`, in microseconds) and of the
allocations per evaluation, plus the machine's core count and load average, since absolute times
move with the load (docs/performance.md, "The decision in OPA").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from compiler.api import compile_policy

ROOT = Path(__file__).resolve().parent.parent
QUERY = "data.hexarch.decision"
MODES = {"read_optimized": ["--optimize-store-for-read-speed"], "default": []}


def _opa() -> str:
    local = ROOT / ".tools" / "bin" / "opa"
    return os.environ.get("HEXARCH_OPA") or (str(local) if local.exists() else "opa")


def _bench(opa: str, bundle: Path, input_file: Path, flags: list[str], count: int) -> list[dict[str, Any]]:
    cmd = [
        opa,
        "bench",
        "-b",
        str(bundle),
        "-i",
        str(input_file),
        QUERY,
        "--format",
        "json",
        "--count",
        str(count),
    ]
    out = subprocess.run([*cmd, *flags], capture_output=True, text=True, check=True, timeout=600).stdout
    # --count N prints N JSON documents one after the other.
    return [json.loads(doc) for doc in re.split(r"(?m)^(?=\{)", out) if doc.strip()]


def measure(policy: Path, input_file: Path, rounds: int, count: int) -> dict[str, Any]:
    opa = _opa()
    with tempfile.TemporaryDirectory(prefix="hexarch-bench-") as tmp:
        bundle = Path(tmp) / "bundle.tar.gz"
        bundle.write_bytes(compile_policy(policy).data)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        load_before = os.getloadavg()
        for _ in range(rounds):
            for mode, flags in MODES.items():
                runs[mode] += _bench(opa, bundle, input_file, flags, count)
        load_after = os.getloadavg()
    results = {
        mode: {
            "median_us": round(
                statistics.median(r["Extra"]["histogram_timer_rego_query_eval_ns_median"] for r in rs) / 1000,
                1,
            ),
            "allocs_per_op": round(statistics.median(r["MemAllocs"] / r["N"] for r in rs)),
            "runs": len(rs),
        }
        for mode, rs in runs.items()
    }
    return {
        "policy": str(policy),
        "input": str(input_file),
        "query": QUERY,
        "opa": subprocess.run([opa, "version"], capture_output=True, text=True, check=True).stdout.split(
            "\n"
        )[0],
        "cpu_count": os.cpu_count(),
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        **results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policy", type=Path, default=ROOT / "examples" / "hexarch.yaml")
    parser.add_argument("--input", type=Path, default=ROOT / "bench" / "decision_input.json")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two store modes")
    parser.add_argument("--count", type=int, default=5, help="opa bench --count per round and mode")
    args = parser.parse_args(argv)
    json.dump(measure(args.policy, args.input, args.rounds, args.count), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
