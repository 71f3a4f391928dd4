"""Results tables from a multirun: python -m izf.report logs/multiruns/<date_time> [more dirs]

Collects every job's metrics.json and its overrides, groups the jobs by dataset, evaluation task and
every swept key except the seed, and gives per classifier ZSL T1 and GZSL U/S/H as mean ± sample
std over the seeds, with the number of runs and their mean wall time. Jobs that failed (error.txt)
or never finished are listed with their reason. Prints the table and writes report.md and
report.csv beside the jobs.

With --paper: the paper's layout instead (datasets as column groups, a block of rows per method: the
reported classifier's test numbers beside that method's published ones from conf/_internal/published/
and the difference), written to paper.md, paper.csv and paper.png.
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

from izf.config import config_dir
from izf.io import atomic_path, save_figure, write_csv
from izf.outputs import (
    DATA_KEY,
    FAILURE_FILE,
    GENERATED,
    METRIC_COLUMNS,
    METRICS_FILE,
    NO_STACKING,
    WALL_TIME_KEY,
    classifiers_in,
)

SEED_KEYS = ("seed",)


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    dataset: str
    task: str
    method: str = "izf"           # the model config's name (izf, izf_paper, eszsl, ...)
    method_class: str = "IZF"     # the class it builds: whose published numbers apply
    metrics: dict[str, float] | None = None
    failure: str | None = None


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]
    jobs: list[Job] = field(default_factory=list)

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key) or "(all)"


def run_config(folder: Path):
    """A job's config: the resolved copy train.py writes (config.yaml). A job that failed before
    writing it has only Hydra's unresolved one, whose ${hydra:...} values cannot be resolved
    outside the job: _select reads those as absent, and _dataset_name does not read an interpolated
    root (whether ${hydra:...} resolves would depend on Hydra's global state in this process)."""
    resolved = folder / "config.yaml"
    return OmegaConf.load(resolved if resolved.is_file() else folder / ".hydra" / "config.yaml")


def _select(config, key: str, default=None):
    return OmegaConf.select(config, key, default=default, throw_on_resolution_failure=False)


def _dataset_name(config) -> str:
    """The dataset's name; for a folder of one's own (dataset=custom) the folder's name, so that
    runs on different folders are not averaged together."""
    name = str(_select(config, "dataset.name", default="?"))
    dataset = _select(config, "dataset")
    root = None if dataset is None or OmegaConf.is_interpolation(dataset, "root") else _select(config, "dataset.root")
    return Path(root).name if name in ("custom", "xlsa17") and isinstance(root, str) else name


def find_jobs(roots: list[Path]) -> list[Job]:
    """Every job folder (holding .hydra/overrides.yaml) under the given sweep folders."""
    jobs = []
    for root in roots:
        for overrides_file in sorted(root.rglob(".hydra/overrides.yaml")):
            folder = overrides_file.parent.parent
            overrides = dict(o.lstrip("+~").split("=", 1) for o in OmegaConf.load(overrides_file) if "=" in o)
            config = run_config(folder)
            hydra_file = folder / ".hydra" / "hydra.yaml"
            choices = OmegaConf.load(hydra_file).hydra.runtime.choices if hydra_file.is_file() else {}
            target = str(_select(config, "model._target_", default="izf.training.module.IZF"))
            job = Job(folder, overrides, dataset=_dataset_name(config),
                      task=str(_select(config, "dataset.split", default="test")),
                      method=str(choices.get("model", "izf")), method_class=target.rsplit(".", 1)[-1])
            if (folder / METRICS_FILE).is_file():
                job.metrics = json.loads((folder / METRICS_FILE).read_text())
            elif (folder / FAILURE_FILE).is_file():
                job.failure = (folder / FAILURE_FILE).read_text().splitlines()[0]
            else:
                job.failure = "no metrics.json: still running, killed, or interrupted"
            jobs.append(job)
    return jobs


def group_jobs(jobs: list[Job]) -> list[Group]:
    """Groups by dataset, task, method (where there are several) and every override that differs
    between the jobs of one method, seeds excepted: in a table of IZF beside ESZSL, IZF's groups are
    not labelled by ESZSL's regularisers, nor ESZSL's by IZF's keys."""
    methods = list(dict.fromkeys(job.method for job in jobs))
    groups: dict[tuple, Group] = {}
    for method in methods:
        its_jobs = [job for job in jobs if job.method == method]
        keys = sorted({k for job in its_jobs for k in job.overrides} - {"model", *SEED_KEYS})
        swept = [k for k in keys if len({job.overrides.get(k) for job in its_jobs}) > 1]
        for job in its_jobs:
            key = (("dataset", job.dataset), ("task", job.task), *([("model", method)] if len(methods) > 1 else []),
                   *((k, job.overrides[k]) for k in swept if k in job.overrides))
            groups.setdefault(key, Group(key)).jobs.append(job)
    return list(groups.values())


def _metric_key(classifier: str, column: str, stacked: bool) -> str:
    """metrics.json's key: "<classifier>/" ("" for the run's reported one), then "no_stacking/" for GZSL
    at γ = 0 (ZSL has no calibrated stacking: its T1 is the same in both rows)."""
    stacking = "" if stacked or column.startswith("zsl") else NO_STACKING
    return "/".join(part for part in (classifier, stacking, column) if part)


def summarise(group: Group, classifier: str, label: str | None = None, stacked: bool = True) -> dict[str, str | int]:
    """A row of `classifier`'s metrics ("" for the run's reported classifier, which a run may choose
    on its validation task), at the run's γ or (stacked=False) at γ = 0."""
    done = [job.metrics for job in group.jobs if job.metrics is not None]
    row: dict[str, str | int] = {"group": group.label(), "classifier": label or classifier, "runs": len(done),
                                 "failed": len(group.jobs) - len(done)}
    for column in METRIC_COLUMNS:
        key = _metric_key(classifier, column, stacked)
        values = [100 * m[key] for m in done if key in m]
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
    rows = []
    for group in group_jobs(jobs):  # each method reports its own classifiers
        names = sorted({name for job in group.jobs if job.metrics for name in classifiers_in(job.metrics)})
        rows += [summarise(group, classifier) for classifier in names or ["—"]]
        if names:  # the reported classifier (chosen per run where it was chosen on validation), with and without γ
            rows += [summarise(group, "", "reported"), summarise(group, "", "reported, γ = 0", stacked=False)]
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


# Under the config folder: one file per method, {method: <class name>, source, results}.
PUBLISHED = "_internal/published"


def published_results() -> dict[str, dict]:
    """Every method's published numbers, by the name of the class that implements it."""
    found = {}
    for path in sorted((config_dir() / PUBLISHED).glob("*.yaml")):
        entry = OmegaConf.to_container(OmegaConf.load(path))
        found[entry["method"]] = entry
    return found


@dataclass
class PaperCell:
    """One method × dataset × metric of the paper layout: this framework's runs and the published value."""
    method: str
    dataset: str
    metric: str
    values: list[float]
    failed: int
    published: float | None = None
    confirmed: bool = True

    def ours(self) -> str:
        if not self.values:
            return "—"
        if len(self.values) == 1:
            return f"{self.values[0]:.1f}"
        return f"{statistics.mean(self.values):.1f} ± {statistics.stdev(self.values):.1f}"

    def theirs(self) -> str:
        return "—" if self.published is None else f"{self.published:.1f}" + ("" if self.confirmed else "*")

    def difference(self) -> float | None:
        return None if self.published is None or not self.values else statistics.mean(self.values) - self.published


def paper_cells(jobs: list[Job], published: dict[str, dict], classifier: str | None = None) -> list[PaperCell]:
    """Test-split jobs by method and dataset (datasets with published numbers first, in their
    order), one cell per metric, beside the published value of the method's class; `classifier`
    None takes each run's reported classifier (the unprefixed metrics)."""
    tested = [job for job in jobs if job.task == "test"]
    methods = list(dict.fromkeys(job.method for job in tested))
    classes = list(dict.fromkeys(job.method_class for job in tested))  # the first method's datasets lead
    order = [name for cls in classes for name in published.get(cls, {}).get("results", {})]
    names = list(dict.fromkeys(name for name in order if any(job.dataset == name for job in tested)))
    names += sorted({job.dataset for job in tested} - set(names))
    cells = []
    for method in methods:
        jobs_of = [job for job in tested if job.method == method]
        results = published.get(jobs_of[0].method_class, {}).get("results", {})
        for name in names:
            done = [job.metrics for job in jobs_of if job.dataset == name and job.metrics is not None]
            failed = sum(job.dataset == name and job.metrics is None for job in jobs_of)
            for metric in METRIC_COLUMNS:
                key = f"{classifier}/{metric}" if classifier else metric
                entry = results.get(name, {}).get(metric)
                cells.append(PaperCell(method, name, metric, [100 * m[key] for m in done if key in m], failed,
                                       None if entry is None else float(entry["value"]),
                                       True if entry is None else bool(entry["confirmed"])))
    return cells


def _paper_markdown(cells: list[PaperCell], published: dict[str, dict], classifier: str | None,
                    skipped: int, classes: dict[str, str], generated: list[str]) -> str:
    methods = list(dict.fromkeys(c.method for c in cells))
    first = [c for c in cells if c.method == methods[0]]
    header = ["", *(f"{c.dataset} {c.metric.split('/')[1]}" for c in first)]
    rows = []
    for method in methods:
        own = [c for c in cells if c.method == method]
        rows += [[f"{method}: this framework ({classifier or 'reported classifier'})", *(c.ours() for c in own)],
                 [f"{method}: runs", *(f"{len(c.values)}" + (f" (+{c.failed} failed)" if c.failed else "")
                                       for c in own)]]
        if classes[method] in published:
            rows += [[f"{method}: published ({published[classes[method]]['method']})", *(c.theirs() for c in own)],
                     [f"{method}: difference", *("—" if (d := c.difference()) is None else f"{d:+.1f}" for c in own)]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("\n%, mean ± sample std over the runs of each dataset's test split. Published:")
    lines += [f"- {entry['method']}: {entry['source']}" for name, entry in published.items()
              if name in classes.values()]
    if any(not c.confirmed for c in cells if c.published is not None):
        lines.append("\n\\* recalled, not confirmed from the paper's table.")
    if skipped:
        lines.append(f"{skipped} validation-task run(s) left out: they are model selection, not results.")
    if generated:
        lines.append(f"\nNot the benchmarks' data: {', '.join(generated)} (`python -m izf.data fake`); the published "
                     "numbers are not comparable with these.")
    return "\n".join(lines) + "\n"


def _paper_figure(cells: list[PaperCell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    shown = [c for c in cells if c.metric == "gzsl/H"] if len({c.method for c in cells}) > 1 else \
        [c for c in cells if c.metric != "zsl/T1"]
    figure, axes = plt.subplots(figsize=(max(5.0, 0.6 * len(shown)), 3.8))
    positions = range(len(shown))
    means = [statistics.mean(c.values) if c.values else 0.0 for c in shown]
    errors = [statistics.stdev(c.values) if len(c.values) > 1 else 0.0 for c in shown]
    axes.bar([x - 0.2 for x in positions], means, 0.4, yerr=errors, label="this framework")
    axes.bar([x + 0.2 for x in positions], [c.published or 0.0 for c in shown], 0.4, label="published", alpha=0.6)
    axes.set_xticks(list(positions), [f"{c.method}\n{c.dataset}\n{c.metric.split('/')[1]}" for c in shown],
                    fontsize=7)
    axes.set(ylabel="%", title="GZSL: this framework vs published")
    axes.legend(fontsize=8)
    save_figure(figure, path)


def paper_report(roots: list[Path], out: Path, classifier: str | None = None) -> list[PaperCell]:
    """The paper layout: prints it, writes paper.md, paper.csv (one row per method × dataset × metric)
    and paper.png."""
    jobs = find_jobs(roots)
    published = published_results()
    cells = paper_cells(jobs, published, classifier)
    if not cells:
        raise SystemExit(f"error: no test-split jobs under {', '.join(map(str, roots))}")
    classes = {job.method: job.method_class for job in jobs}
    generated = sorted({str(job.metrics.get(DATA_KEY)) for job in jobs
                        if job.metrics and GENERATED in str(job.metrics.get(DATA_KEY))})
    markdown = _paper_markdown(cells, published, classifier, sum(job.task != "test" for job in jobs), classes,
                               generated)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "paper.md") as tmp:
        tmp.write_text(markdown)
    write_csv(out / "paper.csv", ["method", "dataset", "metric", "mean", "std", "runs", "failed", "published",
                                  "published_confirmed", "difference"],
              ([c.method, c.dataset, c.metric, statistics.mean(c.values) if c.values else "",
                statistics.stdev(c.values) if len(c.values) > 1 else "", len(c.values), c.failed,
                "" if c.published is None else c.published, c.confirmed if c.published is not None else "",
                "" if c.difference() is None else c.difference()] for c in cells))
    _paper_figure(cells, out / "paper.png")
    print(markdown)
    print(f"wrote {out / 'paper.md'}, {out / 'paper.csv'} and {out / 'paper.png'}")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m izf.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun folders (logs/multiruns/<date_time>)")
    parser.add_argument("--out", type=Path, help="where report.md/report.csv go (default: the first sweep folder)")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's layout beside the published numbers (paper.md, paper.csv, paper.png)")
    parser.add_argument("--classifier",
                        help="with --paper: this classifier's numbers, e.g. softmax or nb for IZF (default: each "
                             "run's reported one)")
    args = parser.parse_args(argv)
    if args.paper:
        paper_report(args.sweeps, args.out or args.sweeps[0], args.classifier)
        return 0
    rows, failed = report(args.sweeps)

    table = Table(title="Results (%, mean ± std over seeds)")
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
