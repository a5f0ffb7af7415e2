"""`python -m bench.latency` runs end to end and reports what docs/performance.md reads from it.

A short run (a few dozen calls, LiteLLM and the plot left out: `make bench` runs them): the figures
themselves are not asserted, only that every path answered 200 every time, in every phase, and
that the JSON carries the fields the docs and the closing note use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sidecar.stack import ROOT

PATHS = ["direct", "hexarch_opa", "hexarch_wasm", "floor", "passthrough"]
PCTS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms")


def test_bench_reports_every_path_and_phase_without_errors(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.latency", "--requests", "40", "--warmup", "10", "--batch", "16"]
    cmd += ["--concurrency", "4,8", "--out-dir", str(tmp_path), "--no-litellm", "--no-plot"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert json.loads(done.stdout) == report
    assert report["paths"] == PATHS
    assert report["machine"]["cpus"] >= 1 and report["versions"]["opa"].count(".") == 2

    seq = report["sequential"]
    for path in PATHS:
        stats = seq["paths"][path]
        assert stats["errors"] == {} and stats["count"] == 40, (path, stats)
        assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["p999_ms"]
    for path in PATHS[1:]:
        assert seq["added"][path]["p50_ms"] == round(
            seq["paths"][path]["p50_ms"] - seq["paths"]["direct"]["p50_ms"], 3
        )
    assert seq["opa_decision_only"]["errors"] == {} and seq["opa_decision_only"]["count"] == 40
    log = seq["sidecar_log_p50_ms"]
    assert log["count"] >= 40 and {"decision_ms", "upstream_ms", "own_ms"} <= log.keys()

    for path in PATHS:
        first, last = (report["streaming"]["paths"][path][k] for k in ("first_byte", "last_byte"))
        assert first["errors"] == {} and first["count"] == 10, (path, first)
        assert first["p50_ms"] <= last["p50_ms"]
    assert set(report["throughput"]) == {"4", "8"}
    for level in report["throughput"].values():
        for path in PATHS:
            assert level[path]["errors"] == {} and level[path]["count"] >= 40, (path, level[path])
            assert level[path]["throughput_rps"] > 0
    assert {"opa_added_p50_ms", "wasm_added_p50_ms"} <= report["targets"].keys()


def test_cpu_parts_reports_each_call_the_sidecar_makes() -> None:
    """`python -m bench.cpu_parts` (short): every part timed, and the Wasm engine and OPA agreeing on
    the bench input (the tool refuses to report otherwise)."""
    cmd = [sys.executable, "-m", "bench.cpu_parts", "--calls", "30", "--rounds", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    parts = report["parts"]
    names = ["decision_http", "decision_wasm", "forward_http", "admission", "settlement", "evalsha_trivial"]
    assert [k for k in parts if k != "limits"] == names
    assert parts["limits"] == 5  # the example's limits for the bench input: admission runs them all
    for name in names:
        assert parts[name]["cpu_us"] > 0 and parts[name]["wall_p50_us"] > 0, (name, parts[name])
    assert report["cpus"] >= 1 and report["calls"] == 30
