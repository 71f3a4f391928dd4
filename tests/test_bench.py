"""Smoke test of the benchmark script: the real config and training step, on CPU, one valid JSON line."""

import json

import pytest

from tests.conftest import run_cli


def test_bench_runs_the_real_config_and_prints_json():
    proc = run_cli(
        "-m", "izf.bench", "dataset.generator.name=APY", "dataset.generator.feature_dim=128",
         "model.flow.hidden=32", "model.flow.blocks=2", "dataset.batch_size=32", "model.softmax.n_gen=5",
         "model.softmax.epochs=1", "model.loss.negative=1.0", "trainer.accelerator=cpu",
         "--steps", "3", "--warmup", "1", timeout=300, check=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    # The overrides reached the model and data: the composed config, not settings of its own.
    assert (result["shape"], result["device"], result["blocks"], result["hidden"]) == ("APY", "cpu", 2, 32)
    assert (result["feature_dim"], result["batch"]) == (128, 32)
    assert result["steps_per_s"] > 0 and 0 < result["utilisation"]
    hooks = {"forward + losses", "backward", "clip + checks + optimiser", "batches, logging, hooks"}
    marks = {"within: flow forward", "within: reverse generation", "within: MMD"}  # profiler marks in the code
    assert set(result["phases_ms"]) == hooks | marks
    assert sum(result["phases_ms"][k] for k in hooks) == pytest.approx(result["step_ms"])
    assert result["phases_ms"]["within: flow forward"] < result["phases_ms"]["forward + losses"]
    assert set(result["eval_s"]) == {"classifier fit (generate + train)", "scores, every classifier, test sets"}
    assert result["peak_rss_mb"] > 0
    assert len(result["post_backward_ms"]) == 4 and all(ms > 0 for ms in result["post_backward_ms"].values())


@pytest.mark.slow
def test_the_gpu_check_script_runs_through_on_a_cpu(tmp_path):
    """tools/gpu_check.sh is the one call a GPU machine gets: its CPU version here, every step of
    it with tiny sizes, so that a GPU's few minutes are not spent on a broken script."""
    import os
    import subprocess

    from tests.conftest import REPO, cli_env

    tiny = "debug=fast dataset.generator.feature_dim=96 dataset.generator.name=APY"
    env = {**cli_env(), "OUT": str(tmp_path), "ACCELERATOR": "cpu", "STEPS": "1", "EXTRA": tiny}
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" in (tmp_path / "tests.txt").read_text()
    for precision in ("32-true", "bf16-mixed"):
        assert "BENCH_JSON " in (tmp_path / f"bench_{precision}.txt").read_text()
    assert (tmp_path / "paper_run" / "metrics.json").is_file()
    assert "schedule=paper run on the stand-in" in (tmp_path / "paper_run.txt").read_text()
