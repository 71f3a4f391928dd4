"""Parsing untrusted files in a child process.

scipy's MAT v5 reader is C code that a corrupted file can crash outright (segmentation fault, bus
error; found by tests/test_fuzz_readers.py), which would take a training run or a sweep with it.
Every .mat file is therefore parsed by `run`, in a child forked from a small server process that
has only numpy, scipy and this package loaded (tens of milliseconds a call after the first). A
crash of the child becomes a DatasetError naming the file; the parent never sees the bad bytes.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

from izf.errors import DatasetError

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["izf.data.xlsa17"])


def _child(function: Callable[[Path, Path], None], source: Path, out: Path, answer) -> None:
    try:
        function(source, out)
        answer.send(("ok", ""))
    except DatasetError as err:
        answer.send(("bad input", str(err)))
    except OSError as err:  # e.g. a full disk while writing the results
        answer.send(("os error", str(err)))
    except BaseException:  # a bug, not bad data: the parent shows the whole traceback
        answer.send(("bug", traceback.format_exc()))


def run(function: Callable[[Path, Path], None], source: Path, out: Path) -> None:
    """`function(source, out)` in a child process; it writes its results into the folder `out`."""
    receive, send = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(function, source, out, send), daemon=True)
    child.start()
    send.close()
    try:
        status, message = receive.recv()
    except EOFError:  # the child died without answering
        status, message = "crashed", ""
    child.join()
    if status == "ok":
        return
    if status == "bad input":
        raise DatasetError(message)
    if status == "os error":
        raise OSError(message)
    if status == "bug":
        raise RuntimeError(f"reading {source} failed in the child process:\n{message}")
    if child.exitcode is not None and child.exitcode > 0:  # it exited before reading: not the file's fault
        raise RuntimeError(
            f"reading {source}: the reader's child process exited with code {child.exitcode} without an answer "
            "(not a crash of the parser); from a script of your own, put its code under "
            '`if __name__ == "__main__":` (the child process imports the main module first)')
    cause = signal.Signals(-child.exitcode).name if child.exitcode else child.exitcode
    raise DatasetError(f"{source}: corrupt file: the MAT parser crashed on it ({cause})")
