from izf.data.dataset import ZSLData
from izf.data.xlsa17 import load_xlsa17, save_xlsa17
from izf.errors import DatasetError

__all__ = ["DatasetError", "ZSLData", "ZSLDataModule", "load_xlsa17", "save_xlsa17"]


def __getattr__(name: str):
    # The data module needs Lightning (3–4 s to import); the data tools (python -m izf.data) do not.
    if name == "ZSLDataModule":
        from izf.data.datamodule import ZSLDataModule
        return ZSLDataModule
    raise AttributeError(f"module 'izf.data' has no attribute '{name}'")
