"""`python -m bench.latency` runs end to end and reports what docs/performance.md reads from it.

A short run (a few dozen calls): the figures themselves are not asserted, only that every path
answered 200 every time and that the report carries the fields the docs and the closing note use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sidecar.stack import ROOT

PATHS = ("direct", "sidecar", "floor")


def test_bench_reports_direct_sidecar_and_floor_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench.latency", "--requests", "40", "--warmup", "10"]
    cmd += ["--batch", "20", "--concurrency", "4", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report

    for mode in ("sequential", "concurrent"):
        result = report[mode]
        for path in PATHS:
            stats = result[path]
            assert stats["errors"] == {}, (mode, path, stats)
            assert stats["count"] == 40, (mode, path, stats)
            assert 0 < stats["p50_ms"] <= stats["p99_ms"]
        for key in ("added", "floor_added", "sidecar_over_floor"):
            assert isinstance(result[f"{key}_p50_ms"], float)
        assert result["added_p50_ms"] == round(result["sidecar"]["p50_ms"] - result["direct"]["p50_ms"], 3)
        assert result["sidecar_over_floor_p50_ms"] == round(
            result["sidecar"]["p50_ms"] - result["floor"]["p50_ms"], 3
        )
    assert report["concurrent"]["sidecar"]["throughput_rps"] > 0
    decision = report["sequential"]["opa_decision_only"]
    assert decision["errors"] == {} and decision["count"] == 40
    log = report["sequential"]["sidecar_log_p50_ms"]
    assert log["count"] >= 40 and {"decision_ms", "upstream_ms", "own_ms"} <= log.keys()
    assert report["versions"]["opa"].count(".") == 2
