"""The package as pip installs it: built from pyproject.toml into a folder of its own and imported
from there, away from the checkout, it finds its configuration and runs its commands."""

import importlib
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# The checkout is importable here through the editable install's finder; drop it, and put the
# installed copy first, so what is imported is the installed one.
WITHOUT_CHECKOUT = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
                    "getattr(f, '__module__', '')]; sys.path.insert(0, sys.argv.pop(1)); ")


@pytest.mark.slow
def test_installed_package_imports_and_finds_its_configuration(tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=300)
    assert (target / "izf" / "conf" / "train.yaml").is_file() and (target / "izf" / "conf" / "dataset").is_dir()

    user = {key: value for key, value in os.environ.items() if key != "IZF_ROOT"} | {"WANDB_MODE": "disabled"}

    def run(code, *args):
        return subprocess.run([sys.executable, "-c", WITHOUT_CHECKOUT + code, str(target), *args], cwd=elsewhere,
                              env=user, capture_output=True, text=True, timeout=300, check=True).stdout

    where = run("import izf, izf.config; print(izf.__file__); print(izf.config.config_dir())").split()
    assert where == [str(target / "izf" / "__init__.py"), str(target / "izf" / "conf")]
    composed = run("from izf.config import compose; print(compose('train', ['dataset=apy']).model.flow.blocks)")
    assert composed.strip() == "5"
    data_cli = "import runpy; runpy.run_module('izf.data', run_name='__main__')"
    run(data_cli, "fake", "--like", "APY", "--out", str(elsewhere / "fake"), "--feature-dim", "8")
    assert "split test_unseen" in run(data_cli, "check", str(elsewhere / "fake"))
    url = run("from omegaconf import OmegaConf; from izf.config import config_dir; from izf.data.__main__ "
              "import DOWNLOAD_CONFIG; print(OmegaConf.load(config_dir() / DOWNLOAD_CONFIG).url)")
    assert url.strip().endswith("xlsa17.zip")  # the download command's configuration, from the package

    # The console scripts (pip writes them to <target>/bin): the same functions as train.py and eval.py.
    scripts = {name: target / "bin" / name for name in ("izf-train", "izf-eval", "izf-data", "izf-report")}
    assert all(path.is_file() for path in scripts.values()), scripts
    command = "import runpy; sys.argv[0] = sys.argv.pop(1); runpy.run_path(sys.argv[0], run_name='__main__')"
    helped = run(command, str(scripts["izf-train"]), "--help")
    assert "train a zero-shot model" in helped and "model: cada_vae, clswgan, eszsl, izf, izf_paper" in helped
    run(command, str(scripts["izf-train"]), "model=eszsl", "debug=fast", "dataset.generator.per_class=20")
    runs = list((elsewhere / "logs" / "runs").glob("*/metrics.json"))  # where train.py would put it
    assert len(runs) == 1 and (runs[0].parent / "train.log").is_file()
    assert "evaluate a checkpoint" in run(command, str(scripts["izf-eval"]), "--help")


def test_each_console_script_names_a_function_of_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"izf-train", "izf-eval", "izf-data", "izf-report"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_a_training_start_does_not_import_torchvision():
    """Lightning imports torchmetrics, which would import torchvision (seconds of every start) for
    metrics this project never uses; izf turns that off, and feature extraction still gets it."""
    probe = ("import sys, izf.training.run, izf.evaluation.metrics; "
             "print('torchvision' in sys.modules); import torchvision.transforms; print('ok')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "ok"]
