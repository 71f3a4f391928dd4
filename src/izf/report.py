"""Results tables from a multirun: python -m izf.report logs/multiruns/<date_time> [more dirs]

Collects every job's metrics.json and its overrides, groups the jobs by dataset, evaluation task and
every swept key except the seed, and gives per classifier ZSL T1 and GZSL U/S/H as mean ± sample
std over the seeds, with the number of runs and their mean wall time. Jobs that failed (error.txt)
or never finished are listed with their reason. Prints the table and writes report.md and
report.csv beside the jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from izf.io import atomic_path, write_csv
from izf.outputs import CLASSIFIERS, FAILURE_FILE, METRIC_COLUMNS, METRICS_FILE, WALL_TIME_KEY

SEED_KEYS = ("seed",)


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    dataset: str
    task: str
    metrics: dict[str, float] | None = None
    failure: str | None = None


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]
    jobs: list[Job] = field(default_factory=list)

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key) or "(all)"


def find_jobs(roots: list[Path]) -> list[Job]:
    """Every job folder (holding .hydra/overrides.yaml) under the given sweep folders."""
    jobs = []
    for root in roots:
        for overrides_file in sorted(root.rglob(".hydra/overrides.yaml")):
            folder = overrides_file.parent.parent
            overrides = dict(o.lstrip("+~").split("=", 1) for o in OmegaConf.load(overrides_file) if "=" in o)
            config = OmegaConf.load(folder / ".hydra" / "config.yaml")
            job = Job(folder, overrides, dataset=str(OmegaConf.select(config, "dataset.name", default="?")),
                      task=str(OmegaConf.select(config, "dataset.split", default="test")))
            if (folder / METRICS_FILE).is_file():
                job.metrics = json.loads((folder / METRICS_FILE).read_text())
            elif (folder / FAILURE_FILE).is_file():
                job.failure = (folder / FAILURE_FILE).read_text().splitlines()[0]
            else:
                job.failure = "no metrics.json: still running, killed, or interrupted"
            jobs.append(job)
    return jobs


def group_jobs(jobs: list[Job]) -> list[Group]:
    """Groups by dataset, task and every override that differs between jobs, seeds excepted."""
    keys = sorted({k for job in jobs for k in job.overrides})
    swept = [k for k in keys if k not in SEED_KEYS and len({job.overrides.get(k) for job in jobs}) > 1]
    groups: dict[tuple, Group] = {}
    for job in jobs:
        key = (("dataset", job.dataset), ("task", job.task), *((k, job.overrides.get(k, "-")) for k in swept))
        groups.setdefault(key, Group(key)).jobs.append(job)
    return list(groups.values())


def summarise(group: Group, classifier: str) -> dict[str, str | int]:
    done = [job.metrics for job in group.jobs if job.metrics is not None]
    row: dict[str, str | int] = {"group": group.label(), "classifier": classifier, "runs": len(done),
                                 "failed": len(group.jobs) - len(done)}
    for column in METRIC_COLUMNS:
        values = [100 * m[f"{classifier}/{column}"] for m in done if f"{classifier}/{column}" in m]
        if not values:
            row[column] = "—"
        elif len(values) == 1:
            row[column] = f"{values[0]:.2f}"
        else:
            row[column] = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    minutes = [m[WALL_TIME_KEY] / 60 for m in done if WALL_TIME_KEY in m]
    row["wall min"] = f"{statistics.mean(minutes):.1f}" if minutes else "—"
    return row


def report(roots: list[Path]) -> tuple[list[dict], list[Job]]:
    jobs = find_jobs(roots)
    if not jobs:
        raise SystemExit(f"error: no job folders (with .hydra/overrides.yaml) under {', '.join(map(str, roots))}")
    rows = [summarise(group, classifier) for group in group_jobs(jobs) for classifier in CLASSIFIERS]
    return rows, [job for job in jobs if job.metrics is None]


def retrain_command(sweep: Path) -> str | None:
    """For an Optuna search (optimization_results.yaml): the command that trains its best
    parameters on the real splits (the search itself only ever saw the validation task)."""
    results, jobs = sweep / "optimization_results.yaml", sorted(sweep.glob("*/.hydra/overrides.yaml"))
    if not (results.is_file() and jobs):
        return None
    best = OmegaConf.load(results).best_params
    kept = [o for o in OmegaConf.load(jobs[0])  # a trial's overrides: the search's own, then the sampled ones
            if not o.startswith(("hparams_search=", "hydra.", "dataset.split=")) and o.split("=")[0] not in best]
    return " ".join(["python train.py", *kept, *(f"{k}={v}" for k, v in best.items()), "dataset.split=test"])


def _markdown(rows: list[dict], failed: list[Job]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    lines.append("\nMetrics in %, mean ± sample std over seeds.")
    if failed:
        lines += ["\n## Failed or unfinished runs\n"] + [f"- `{job.folder}`: {job.failure}" for job in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m izf.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun folders (logs/multiruns/<date_time>)")
    parser.add_argument("--out", type=Path, help="where report.md/report.csv go (default: the first sweep folder)")
    args = parser.parse_args(argv)
    rows, failed = report(args.sweeps)

    table = Table(title="IZF results (%, mean ± std over seeds)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("group", "classifier") else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the table unwrapped
    console.print(table)
    for job in failed:
        console.print(f"[red]failed[/red] {job.folder}: {job.failure}")

    for sweep in args.sweeps:
        if (command := retrain_command(sweep)) is not None:
            print(f"best of the search in {sweep}; its test numbers come from:\n  {command}")  # unwrapped

    out = args.out or args.sweeps[0]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(rows, failed))
    write_csv(out / "report.csv", list(rows[0]), (list(row.values()) for row in rows))
    print(f"wrote {out / 'report.md'} and {out / 'report.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
