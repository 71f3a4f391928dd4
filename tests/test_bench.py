"""Smoke test of the benchmark script: it runs on CPU and prints one valid JSON line."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_runs_and_prints_json():
    proc = subprocess.run(
        [sys.executable, "-m", "izf.bench", "--shape", "APY", "--feature-dim", "128", "--hidden", "32",
         "--blocks", "2", "--batch", "32", "--steps", "2", "--warmup", "1", "--n-gen", "5", "--epochs", "1",
         "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert result["shape"] == "APY" and result["device"] == "cpu"
    assert result["steps_per_s"] > 0 and 0 < result["utilisation"]
    assert {"flow forward", "reverse generation", "MMD", "backward", "clip + optimiser"} <= set(result["phases_ms"])
    assert set(result["eval_s"]) == {"softmax fit (generate + train)", "scores, both classifiers, test sets"}
    assert result["peak_rss_mb"] > 0
