import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The project's read-only inputs live beside the checkout (../shared); a user's clone has none.
SHARED = Path(os.environ.get("IZF_SHARED_DIR", REPO.parent / "shared"))
XLSA17 = SHARED / "data" / "xlsa17"


@pytest.fixture
def xlsa17_dir() -> Path:
    if not (XLSA17 / "AWA2" / "att_splits.mat").is_file():
        pytest.skip(f"the real xlsa17 split files are not here ({XLSA17}); they come with the project's shared/ folder")
    return XLSA17


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# Small generated data and a tiny flow: end-to-end runs in seconds.
SMALL = ["dataset.generator.seen=6", "dataset.generator.unseen=3", "dataset.generator.per_class=40",
         "dataset.generator.feature_dim=16", "dataset.generator.semantic_dim=6", "dataset.batch_size=64"]
TINY = [*SMALL, "model.flow.blocks=2", "model.flow.hidden=32", "model.softmax.n_gen=50", "model.softmax.epochs=2",
        "logger=none", "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


def cli_env() -> dict[str, str]:
    """The environment of a CLI run in the tests: W&B off, paths relative to the checkout."""
    return {**os.environ, "WANDB_MODE": "disabled", "IZF_ROOT": str(REPO)}


def _run_train(*overrides, check=True):
    """train.py in a subprocess with these overrides (W&B off); fails the test with its output."""
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def train_cli():
    """Runs train.py through the real CLI: train_cli(*overrides, check=True) -> CompletedProcess."""
    return _run_train
