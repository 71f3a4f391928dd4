import os
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
