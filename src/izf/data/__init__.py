from izf.data.datamodule import ZSLDataModule
from izf.data.dataset import ZSLData
from izf.data.xlsa17 import load_xlsa17, save_xlsa17
from izf.errors import DatasetError

__all__ = ["DatasetError", "ZSLData", "ZSLDataModule", "load_xlsa17", "save_xlsa17"]
