"""The baselines in the shared harness: ESZSL's closed form against a direct solve, and every
method end to end through train.py and eval.py on tiny generated data (same metrics.json keys,
checkpoints that eval.py rebuilds as the right class and scores to the same numbers)."""

import json

import lightning.pytorch as L
import pytest
import torch

from izf.baselines.eszsl import ESZSL, eszsl_weights
from izf.data import ZSLDataModule
from izf.outputs import METRIC_COLUMNS, NO_STACKING, WALL_TIME_KEY
from izf.training.evaluate import evaluate_model
from tests.conftest import SMALL, run_cli


def test_eszsl_weights_solve_the_papers_objective():
    """V minimises ‖XᵀVS − Y‖² + γ‖VS‖² + λ‖XᵀV‖² + γλ‖V‖²: its normal equations, vectorised
    with Kronecker products (vec(AVB) = (Bᵀ ⊗ A) vec V), solved directly, give the same V."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=generator, dtype=torch.float64)
    y = torch.arange(30) % 4
    s = torch.randn(4, 5, generator=generator, dtype=torch.float64)  # a row per class
    gamma, lam = 0.7, 0.3
    targets = -torch.ones(30, 4, dtype=torch.float64)
    targets[torch.arange(30), y] = 1
    a = x.T @ x + gamma * torch.eye(7, dtype=torch.float64)            # (X Xᵀ + γI) in the paper's layout
    b = s.T @ s + lam * torch.eye(5, dtype=torch.float64)              # (S Sᵀ + λI)
    direct = torch.linalg.solve(torch.kron(b.T.contiguous(), a), (x.T @ targets @ s).T.reshape(-1))
    v = eszsl_weights(x, y, s, gamma, lam)
    torch.testing.assert_close(v, direct.reshape(5, 7).T)
    assert not torch.allclose(eszsl_weights(x, y, s, gamma, 10 * lam), v)  # λ matters


def test_eszsl_fits_in_one_step_and_scores_every_class():
    datamodule = ZSLDataModule(name="synthetic", source="synthetic", batch_size=32, batches_per_epoch=10,
                               generator={"seen": 5, "unseen": 3, "semantic_dim": 4, "feature_dim": 12,
                                          "per_class": 30})
    datamodule.setup()
    model = ESZSL(num_classes=8, feature_dim=12, semantic_dim=4, feature_reg=1.0, semantic_reg=0.1)
    trainer = L.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 1  # the closed form, then the run stops
    x, y = datamodule.split("trainval")
    seen = datamodule.seen_classes
    expected = eszsl_weights(x, torch.searchsorted(seen, y), datamodule.semantics[seen], 1.0, 0.1).float()
    torch.testing.assert_close(model.weights, expected)
    scores = model.classifier_scores(None, x[:3])
    assert scores["compatibility/gzsl"].shape == (3, 8)
    torch.testing.assert_close(scores["compatibility/gzsl"], x[:3] @ expected @ datamodule.semantics.T)
    metrics = evaluate_model(model, datamodule).metrics
    assert metrics["zsl/T1"] == metrics["compatibility/zsl/T1"] > 1 / 3  # 3 unseen classes: chance is 1/3

    # The validation choice tries other regularisers on the same model: the evaluation solves again.
    model.hparams.feature_reg = 100.0
    evaluate_model(model, datamodule)
    torch.testing.assert_close(model.weights, eszsl_weights(x, torch.searchsorted(seen, y), datamodule.semantics[seen],
                                                            100.0, 0.1).float())


@pytest.mark.slow
@pytest.mark.parametrize("model, classifiers", [("eszsl", ["compatibility"]), ("clswgan", ["softmax"]),
                                               ("cada_vae", ["softmax"])])
def test_each_method_end_to_end_through_the_shared_harness(tmp_path, train_cli, model, classifiers):
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    proc = train_cli(f"model={model}", "debug=fast", *SMALL, "logger=none", "callbacks.progress_bar=null",
                     f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    gzsl = [column for column in METRIC_COLUMNS if column.startswith("gzsl/")]
    assert {key for key in metrics if key.count("/") >= 2} == {  # its classifiers, the shared keys, GZSL at γ = 0
        f"{c}/{column}" for c in classifiers for column in METRIC_COLUMNS} | {
        f"{prefix}{NO_STACKING}/{column}" for prefix in ["", *(f"{c}/" for c in classifiers)] for column in gzsl}
    assert all(0 <= metrics[column] <= 1 for column in METRIC_COLUMNS)
    assert f"{classifiers[0]} (reported)" in proc.stdout
    run_cli("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={eval_dir}", check=True)
    del metrics[WALL_TIME_KEY]
    again = json.loads((eval_dir / "metrics.json").read_text())
    assert {key: again[key] for key in metrics} == pytest.approx(metrics)  # rebuilt as the right class
