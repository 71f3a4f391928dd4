"""What a run leaves in its directory, shared by the run and the tools that read it (no torch
import, so `python -m izf.report` starts at once)."""

CLASSIFIERS = ("nb", "softmax")                       # metrics.json keys: "<classifier>/<metric>"
METRIC_COLUMNS = ("zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H")
METRICS_FILE = "metrics.json"
WALL_TIME_KEY = "time/wall_s"  # seconds from the start of the job to its metrics (training + evaluation)
FAILURE_FILE = "error.txt"  # in a failed multirun job's directory: the reason, then the traceback
