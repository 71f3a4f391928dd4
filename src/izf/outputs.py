"""What a run leaves in its directory, shared by the run and the tools that read it (no torch
import, so `python -m izf.report` starts at once)."""

METRIC_COLUMNS = ("zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H")  # metrics.json: "<classifier>/<column>" and, for
                                                          # the method's reported classifier, "<column>"
METRICS_FILE = "metrics.json"
WALL_TIME_KEY = "time/wall_s"  # seconds from the start of the job to its metrics (training + evaluation)
DATA_KEY = "data"  # metrics.json: the data's name, e.g. "APY (generated stand-in)" for a folder `izf.data fake` made
GENERATED = "generated stand-in"  # in that name: the data are not the benchmark's
NO_STACKING = "no_stacking"  # "<classifier>/no_stacking/gzsl/...": GZSL at γ = 0 beside the calibrated numbers
FAILURE_FILE = "error.txt"  # in a failed multirun job's directory: the reason, then the traceback


def classifiers_in(metrics: dict[str, float]) -> list[str]:
    """The classifiers a run's metrics.json reports ("<classifier>/<column>" keys): each method has its own."""
    return sorted({key[: -len(column) - 1] for key in metrics for column in METRIC_COLUMNS
                   if key.endswith("/" + column) and "/" not in key[: -len(column) - 1]} - {NO_STACKING})
