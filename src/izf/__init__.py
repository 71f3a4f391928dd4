"""Invertible Zero-Shot Flows."""

import importlib.abc
import importlib.util
import sys


class _TorchmetricsWithoutTorchvision(importlib.abc.MetaPathFinder):
    """Lightning imports torchmetrics, whose package import loads its image and detection metrics,
    which import torchvision wherever it is installed, for models this project never uses (only
    `izf.data extract` needs torchvision, and imports it itself). Measured: 0.1 s and 13 MB of
    every start (most of what torchvision loads, Lightning loads anyway; docs/performance.md).
    Hand-written because neither library offers a switch: once torchmetrics' availability flags
    are read, its torchvision flag is turned off for this process; nothing else changes."""

    def find_spec(self, name, path, target=None):
        if name != "torchmetrics.utilities.imports":
            return None
        sys.meta_path.remove(self)  # find the real module, once
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if hasattr(module, "_TORCHVISION_AVAILABLE"):
                module._TORCHVISION_AVAILABLE = False

        spec.loader.exec_module = exec_module
        return spec


if "torchmetrics" not in sys.modules:
    sys.meta_path.insert(0, _TorchmetricsWithoutTorchvision())
