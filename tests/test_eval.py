"""eval.py on a checkpoint from a short run: the run's own numbers, the calibrated-stacking sweep,
and clear errors for a wrong checkpoint or dataset."""

import csv
import json

import pytest
import torch

from izf.config import compose
from izf.errors import ConfigError
from izf.evaluation.calibration import gamma_grid, stacking_curve
from izf.evaluation.metrics import gzsl_metrics
from izf.outputs import WALL_TIME_KEY
from izf.training.evaluate import evaluate_checkpoint
from tests.conftest import TINY, run_cli


@pytest.mark.slow
def test_eval_reproduces_the_run_and_sweeps_gamma(tmp_path, train_cli):
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    train_cli(*TINY, "debug=fast", "model.calibration_gamma.softmax=0", "model.calibration_gamma.nb=0",
              f"hydra.run.dir={run_dir}")
    proc = run_cli("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={eval_dir}",
                   check=True)
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    del trained[WALL_TIME_KEY]  # eval.py reports accuracy only
    assert {k: evaluated[k] for k in trained} == trained  # same weights, data and seed: same numbers
    rows = list(csv.DictReader((eval_dir / "calibration.csv").open()))
    for classifier in ("nb", "softmax"):
        curve = [r for r in rows if r["classifier"] == classifier]
        at_zero = next(r for r in curve if float(r["gamma"]) == 0.0)
        assert float(at_zero["gzsl/H"]) == pytest.approx(trained[f"{classifier}/gzsl/H"])
        assert float(curve[0]["gzsl/U"]) <= float(curve[-1]["gzsl/U"])  # larger γ: more unseen predictions
    assert (eval_dir / "calibration_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibrated stacking" in proc.stdout

    # A γ chosen elsewhere (a validation run) applied to this checkpoint: the reported numbers are
    # the sweep's at that γ.
    shifted_dir = tmp_path / "shifted"
    run_cli("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "calibration_gamma={softmax:0.7,nb:0.1}",
            "calibration.gammas=[0,0.1,0.7]", f"hydra.run.dir={shifted_dir}", check=True)
    shifted = json.loads((shifted_dir / "metrics.json").read_text())
    rows = list(csv.DictReader((shifted_dir / "calibration.csv").open()))
    for classifier, gamma in (("softmax", 0.7), ("nb", 0.1)):
        row = next(r for r in rows if r["classifier"] == classifier and float(r["gamma"]) == gamma)
        assert shifted[f"{classifier}/gzsl/H"] == pytest.approx(float(row["gzsl/H"]))

    # Refusals, in-process (the CLI's one-line form of such errors is tested with train.py).
    def evaluated(*overrides):
        return evaluate_checkpoint(compose("eval", [*overrides, f"paths.output_dir={eval_dir}"]))
    with pytest.raises(ConfigError, match="the checkpoint was trained for 9 classes"):
        evaluated(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "dataset=toy")
    with pytest.raises(ConfigError, match="none.ckpt: no such file"):
        evaluated(f"ckpt_path={tmp_path / 'none.ckpt'}")


def test_gamma_grid_spans_from_all_seen_to_all_unseen():
    torch.manual_seed(0)
    scores = torch.randn(200, 5)
    seen, unseen = torch.tensor([0, 1, 2]), torch.tensor([3, 4])
    labels = torch.randint(0, 5, (200,))
    # Seen classes ahead by 10 on every image: every quantile of the gap is > 0, so γ = 0 (the
    # unshifted classifier, always reported) is in the grid only because it is added on purpose.
    biased = scores + 10 * torch.isin(torch.arange(5), seen)
    curve = stacking_curve(biased[:100], labels[:100], biased[100:], labels[100:], seen, unseen)
    assert sorted(p["gamma"] for p in curve)[:2][0] == 0.0 and sorted(p["gamma"] for p in curve)[1] > 5
    gammas = gamma_grid(scores, seen, unseen)
    lowest, highest = (calibrated.argmax(1) for calibrated in
                       (scores - g * torch.isin(torch.arange(5), seen) for g in (gammas[0], gammas[-1])))
    assert torch.isin(lowest, seen).all() and torch.isin(highest, unseen).all()


@pytest.mark.parametrize("seed", range(3))
def test_the_stacking_curve_is_gzsl_metrics_at_each_gamma(seed):
    """The curve's shortcut (each image's best seen and best unseen class, found once) gives what the
    protocol's full argmax gives at every γ, ties included (small integer scores tie often)."""
    g = torch.Generator().manual_seed(seed)
    seen, unseen = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4, 6])
    scores_seen, scores_unseen = (torch.randint(0, 4, (n, 7), generator=g).float() for n in (40, 30))
    y_seen, y_unseen = seen[torch.arange(40) % 4], unseen[torch.arange(30) % 3]
    gammas = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]
    for point in stacking_curve(scores_seen, y_seen, scores_unseen, y_unseen, seen, unseen, gammas):
        expected = gzsl_metrics(scores_seen, y_seen, scores_unseen, y_unseen, seen, unseen, point["gamma"])
        assert {k: point[k] for k in expected} == expected
