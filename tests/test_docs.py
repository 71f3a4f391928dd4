"""The documentation is tested: every command in the ```bash blocks of README.md and docs/*.md runs,
as written, from a fresh copy of the repository in a temporary directory (no IZF_ROOT, no run or sweep
directory added), in the order the page gives them, so each page is tested as the sequence a user
follows. Where a command would take long, the table below appends cheap overrides (`debug=fast`, a few
trials); where the internet is needed, the data come from a local server or a small generated stand-in
put where the command expects it. A command that cannot run here is listed with its reason, and the
rest of its block still runs. A command missing from the table fails the suite: add it below."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from izf.data.generate import like
from izf.data.xlsa17 import load_xlsa17, save_xlsa17
from tests.conftest import REPO, run_cli, user_env

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
FAST = ("debug=fast",)  # seconds instead of minutes or hours; the command's own keys stay as written


@dataclass(frozen=True)
class Run:
    """Run the command with these arguments appended, after putting `needs` into the copy."""
    extra: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # "awa2": an AWA2-shaped folder in data/xlsa17/AWA2; "photos": images + table


@dataclass(frozen=True)
class Skip:
    reason: str


NO_INSTALL = Skip("installs into the environment the tests run in; .ci/run installs on a clean machine")
CPU_INDEX = Skip("PyTorch's CPU wheel index is not reachable from CI (only PyPI is); untested")
GPU = Skip("needs a GPU; CI has none")

# Every command of the docs, exactly as written (whitespace collapsed, trailing comment removed).
COMMANDS: dict[str, Run | Skip] = {
    # README: the two commands
    "pip install -r requirements.txt": NO_INSTALL,
    "python train.py": Run(FAST),
    "python -m pytest -q": Skip("the test suite itself; .ci/run runs it"),
    "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu": CPU_INDEX,
    # README: which command do I run
    "python train.py debug=fast": Run(),
    "python -m izf.data download awa2": Run(("--url", "{url}")),  # the local server, not the internet
    "python -m izf.data check awa2": Run(),
    "python train.py experiment=izf_awa2 trainer=gpu": GPU,
    "python train.py -m experiment=izf_awa2 schedule=cpu seed=0,1,2": Run(FAST, needs=("awa2",)),
    "python -m izf.report logs/multiruns/<date_time>": Run(),
    "python train.py -m experiment=izf_awa1,izf_awa2,izf_cub,izf_sun,izf_apy seed=0,1,2 trainer=gpu": GPU,
    # the paper-table route: resolved to the sweep before it (a named benchmark)
    "python -m izf.report logs/multiruns/<date_time> --paper": Run(),
    "python train.py -m model=izf,eszsl,clswgan,cada_vae dataset=awa2 schedule=cpu": Run(FAST, needs=("awa2",)),
    # random weights: torchvision's download needs the internet; small images, no worker processes: speed
    "python -m izf.data extract --images photos/ --attributes classes.csv --out data/mine":
        Run(("--weights", "random", "--image-size", "64", "--workers", "0"), needs=("photos",)),
    "python -m izf.data check data/mine": Run(),
    "python train.py dataset=custom dataset.root=data/mine": Run(FAST),
    "python eval.py ckpt_path=logs/runs/<run>/checkpoints/last.ckpt": Run(),
    "python train.py -m hparams_search=izf_optuna experiment=izf_awa2 schedule=cpu":
        Run((*FAST, "hydra.sweeper.n_trials=1"), needs=("awa2",)),  # 1 trial of the 20
    # docs/accuracy.md: the per-dataset choices, all, all but one pinned, none
    "python train.py experiment=izf_awa2 schedule=cpu": Run(FAST, needs=("awa2",)),
    "python train.py experiment=izf_awa2 schedule=cpu model.classifier=softmax": Run(FAST, needs=("awa2",)),
    "python train.py experiment=izf_awa2 schedule=cpu select.enabled=false": Run(FAST, needs=("awa2",)),
    # docs/baselines.md
    "python train.py -m model=eszsl dataset=awa2 dataset.split=validation logger=none callbacks=none "
    "model.feature_reg=0.01,1,100 model.semantic_reg=0.01,1,100": Run(needs=("awa2",)),  # closed form: fast as is
    # docs/configuration.md
    "python train.py seed=3 trainer.max_steps=5000 model.softmax.epochs=20":
        Run((*FAST, "trainer.max_steps=20", "model.softmax.epochs=2")),  # the command line's own keys win over debug
    "python train.py model.classifier=nb model.calibration_gamma.nb=0.2": Run(FAST),
    "python train.py model=izf_paper schedule=cpu": Run(FAST),
    "python train.py trainer=gpu trainer.precision=bf16-mixed": GPU,
    "bash tools/gpu_check.sh": GPU,  # its CPU version: tests/test_bench.py
    # docs/data.md
    "python -m izf.data fake --like APY --out data/stand_in/APY": Run(("--feature-dim", "96")),  # 2048-d: 126 MB
    "python train.py dataset=custom dataset.root=data/stand_in/APY": Run(FAST),
    "python train.py dataset=stand_in dataset.generator.name=APY": Run((*FAST, "dataset.generator.feature_dim=96")),
    # docs/performance.md: the benchmark's own options, shortened (the last value of an option wins)
    "python -m izf.bench --steps 6 dataset.generator.name=AWA2":
        Run((*FAST, "dataset.generator.feature_dim=96", "--steps", "1", "--warmup", "1")),
    "python -m izf.bench --curve 250,500,1000 model=izf_paper":
        Run((*FAST, "dataset.generator.feature_dim=96", "--curve", "2,4")),
    "python -m izf.bench --time-to-accuracy izf,cada_vae,clswgan,eszsl dataset=custom dataset.root=data/xlsa17/AWA2 "
    "schedule=cpu": Run((*FAST, "--fractions", "1"), needs=("awa2",)),
    "python -m izf.data bench-load data/xlsa17/AWA2": Run(("--repeat", "1"), needs=("awa2",)),
    "python train.py -m model=izf,cada_vae seed=0,1,2 dataset=custom dataset.root=data/xlsa17/AWA2 schedule=cpu":
        Run(FAST, needs=("awa2",)),
    # docs/reliability.md
    "python train.py debug=fast hydra.run.dir=logs/runs/<run> ckpt_path=last": Run(),
    "python train.py experiment=izf_awa2 trainer=ddp": Skip("needs several GPUs; CI has none"),
    "python train.py -m launcher=slurm hydra.launcher.partition=gpu experiment=izf_cub seed=0,1,2,3,4":
        Skip("submits to a SLURM cluster; CI has none (launcher=local below runs the same code path)"),
    "python train.py -m launcher=local debug=fast seed=0,1": Run(),
}


# ---------------------------------------------------------------------------------------------------
# Reading the commands out of a page

BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def page_commands(page: str) -> list[str]:
    """The page's shell commands in order: continuation lines joined, comments dropped."""
    commands = []
    for block in BLOCK.findall((REPO / page).read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)  # a comment, whole-line or trailing
            if line.strip():
                commands.append(" ".join(line.split()))
    return commands


def test_every_documented_command_has_an_entry():
    """A new command in the docs needs a row in COMMANDS (run it, with cheap overrides, or say why not)."""
    found = {command: page for page in PAGES for command in page_commands(page)}
    assert len(found) > 10  # the extraction finds the commands
    unknown = [f"{page}: {command}" for command, page in found.items() if command not in COMMANDS]
    assert not unknown, "commands without an entry in tests/test_docs.py COMMANDS; add them:\n" + "\n".join(unknown)
    stale = [command for command in COMMANDS if command not in found]
    assert not stale, f"entries for commands no page has any more; remove them: {stale}"


# ---------------------------------------------------------------------------------------------------
# What the commands need that a user would have fetched from the internet

@pytest.fixture(scope="module")
def awa2_stand_in(tmp_path_factory) -> Path:
    """A folder with AWA2's published sizes (so the benchmark checks pass), 96-d features instead of
    2048-d to keep it small; its feature cache is built once here and travels with every copy."""
    folder = save_xlsa17(like("AWA2", feature_dim=96), tmp_path_factory.mktemp("stand_in") / "AWA2")
    load_xlsa17(folder, name="AWA2")
    return folder


@pytest.fixture(scope="module")
def archive_url(awa2_stand_in, tmp_path_factory) -> str:
    """The stand-in laid out as xlsa17.zip, served on 127.0.0.1 (as tests/test_download.py does)."""
    served = tmp_path_factory.mktemp("served")
    with zipfile.ZipFile(served / "xlsa17.zip", "w") as zf:
        for file in ("res101.mat", "att_splits.mat"):
            zf.write(awa2_stand_in / file, f"xlsa17/data/AWA2/{file}")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/xlsa17.zip"
    httpd.shutdown()
    httpd.server_close()


def _photos(copy: Path) -> None:
    """photos/<class>/*.png and classes.csv, as the README describes them: 5 classes of 5 images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for c in range(5):
        folder = copy / "photos" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(",".join([f"class{c}", *(f"{v:.3f}" for v in rng.random(4))]))
    (copy / "classes.csv").write_text("\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------------------
# Running a page

def fresh_copy(dest: Path) -> Path:
    """The files `git ls-files` lists plus untracked ones git does not ignore: what a clone holds,
    with the working tree's edits."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


class Page:
    """One page's commands run in order in one copy; placeholders name what earlier commands made."""

    def __init__(self, copy: Path, url: str, awa2: Path):
        self.copy, self.url, self.awa2 = copy, url, awa2
        self.made: dict[str, str] = {}  # "runs" / "multiruns": the latest directory made, relative to the copy

    def _dirs(self, kind: str) -> set[Path]:
        return set((self.copy / "logs" / kind).glob("*"))

    def latest(self, kind: str) -> str:
        assert kind in self.made, f"no earlier command on the page made a logs/{kind}/ directory"
        return self.made[kind]

    def resolve(self, command: str) -> str:
        """The placeholders become what the previous commands made: `<run>` and `<date_time>` their
        folders."""
        fill = {"logs/runs/<run>": lambda: self.latest("runs"),
                "logs/multiruns/<date_time>": lambda: self.latest("multiruns")}
        for placeholder, value in fill.items():
            if placeholder in command:
                command = command.replace(placeholder, value())
        left = re.findall(r"<[^<>\s]+>", command)
        assert not left, f"{command}: the test does not know how to fill {left}; teach Page.resolve"
        return command

    def prepare(self, needs: tuple[str, ...]) -> None:
        target = self.copy / "data" / "xlsa17" / "AWA2"
        if "awa2" in needs and not target.exists():  # as if downloaded: the command finds it where it looks
            shutil.copytree(self.awa2, target)
        if "photos" in needs and not (self.copy / "photos").exists():
            _photos(self.copy)

    def run(self, command: str, entry: Run) -> str | None:
        """Runs one command; None if it succeeded, else what went wrong."""
        self.prepare(entry.needs)
        try:
            resolved = self.resolve(command)
        except AssertionError as unresolved:  # e.g. the command that should have made the folder failed
            return f"$ {command}\n{unresolved}"
        argv = [*shlex.split(resolved), *(a.format(url=self.url) for a in entry.extra)]
        before = {kind: self._dirs(kind) for kind in ("runs", "multiruns")}
        if argv[0] == "python":
            proc = run_cli(*argv[1:], cwd=self.copy, timeout=300)
        else:
            proc = subprocess.run(argv, cwd=self.copy, env=user_env(), capture_output=True, text=True, timeout=300)
        new = {kind: sorted(self._dirs(kind) - before[kind]) for kind in before}
        for kind, dirs in new.items():
            if dirs:
                self.made[kind] = str(dirs[-1].relative_to(self.copy))
        # A multirun job that fails writes error.txt and the sweep still exits 0: count it as a failure.
        errors = [p for kind in new for d in new[kind] for p in d.rglob("error.txt")]
        if proc.returncode == 0 and not errors:
            return None
        detail = "\n".join(e.read_text()[-1500:] for e in errors) or f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return f"$ {' '.join(argv)}\nexit {proc.returncode}\n{detail}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_documented_commands_run(page, tmp_path, archive_url, awa2_stand_in):
    commands = page_commands(page)
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, f"{page}: commands without an entry in tests/test_docs.py COMMANDS; add them: {unknown}"
    runner = Page(fresh_copy(tmp_path / "clone"), archive_url, awa2_stand_in)
    failures = []
    for command in commands:
        entry = COMMANDS[command]
        if isinstance(entry, Skip):
            print(f"skipped: {command} ({entry.reason})")
            continue
        start = time.perf_counter()
        failure = runner.run(command, entry)
        print(f"{time.perf_counter() - start:5.1f} s  {command}")  # shown with -s, or on failure
        if failure:
            failures.append(failure)
    assert not failures, f"{page}: {len(failures)} documented command(s) failed:\n\n" + "\n\n".join(failures)
