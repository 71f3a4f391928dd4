import io
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
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


# Where device-dependent tests run: the CPU always, a CUDA GPU too where there is one (tools/gpu_check.sh).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# Small generated data and a tiny flow: end-to-end runs in seconds.
SMALL = ["dataset.generator.seen=6", "dataset.generator.unseen=3", "dataset.generator.per_class=40",
         "dataset.generator.feature_dim=16", "dataset.generator.semantic_dim=6", "dataset.batch_size=64"]
TINY = [*SMALL, "model.flow.blocks=2", "model.flow.hidden=32", "model.softmax.n_gen=50", "model.softmax.epochs=2",
        "logger=none", "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


def cli_env() -> dict[str, str]:
    """The environment of a CLI run in the tests: W&B off, paths relative to the checkout."""
    return {**os.environ, "WANDB_MODE": "disabled", "IZF_ROOT": str(REPO)}


def user_env() -> dict[str, str]:
    """A user's environment: W&B off (as .ci/run sets it), no IZF_ROOT, so paths follow the working
    directory as they do for someone who has just cloned the repository."""
    return {key: value for key, value in cli_env().items() if key != "IZF_ROOT"}


# The processes the tests start (CLI runs, worker pools) are forked from a server that has already
# imported torch, Lightning, Hydra and izf: a fresh interpreter spends ≈ 7 s on those imports, and the
# suite starts dozens. The server itself never computes, so its children may use OpenMP (a child forked
# from a process whose OpenMP threads have run hangs on its first parallel region). Runs that are
# signalled mid-run, or must not see the checkout, start real interpreters.
FORK_SERVER = multiprocessing.get_context("forkserver")


@pytest.fixture(scope="session", autouse=True)
def _fork_server():
    """Starts the server (in the background) once every test module is imported: a process has one
    forkserver, and izf.data.isolated sets a shorter preload list for it when it is imported; a
    running server keeps the list it started with. (The isolated reader's children then cost ≈ 50 ms
    more each, ≈ 45 s over the fuzz tests; the CLI runs save several times that.)"""
    FORK_SERVER.set_forkserver_preload(["tests.conftest", "izf.training.run", "izf.training.evaluate", "izf.report"])
    multiprocessing.forkserver.ensure_running()


def _as_main(argv: list[str], env: dict[str, str], stdout: str, stderr: str, cwd: str) -> None:
    """In the forked child: what `python *argv` would do in `cwd`, with its output in two files."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    code = 1
    try:
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))  # as python does: the script's folder
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the interpreter's own last resort: traceback, exit 1
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 600,
            check: bool = False, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python *argv` (a script, or `-m module`) run in `cwd` (default: the checkout) with `env`; its exit
    code and output. `env` defaults to cli_env() in the checkout and to user_env() (no IZF_ROOT)
    elsewhere, so a run in another folder writes there. check=True: a non-zero exit fails the test
    with the output. (The child is forked from the server, so it runs the izf the server imported:
    the installed one, this checkout's src/.)"""
    if env is None:
        env = cli_env() if cwd is None else user_env()
    with tempfile.TemporaryDirectory() as tmp:
        stdout, stderr = Path(tmp, "stdout"), Path(tmp, "stderr")
        stdout.touch(), stderr.touch()  # empty, not missing, if the child dies before it writes
        child = FORK_SERVER.Process(target=_as_main, args=(list(argv), env, str(stdout), str(stderr),
                                                           str(cwd or REPO)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["python", *argv], timeout, stdout.read_text(), stderr.read_text())
        proc = subprocess.CompletedProcess(["python", *argv], child.exitcode, stdout.read_text(), stderr.read_text())
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(argv[:2])} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _run_train(*overrides, check=True):
    """train.py with these overrides (W&B off); fails the test with its output."""
    return run_cli("train.py", *overrides, check=check)


@pytest.fixture(scope="session")
def train_cli():
    """Runs train.py through the real CLI: train_cli(*overrides, check=True) -> CompletedProcess."""
    return _run_train
