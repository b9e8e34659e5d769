"""Data in: labeled items, splits, decoding."""

from headstart.data.dataset import SPLITS, Dataset, Item, load_dataset, stratified_split

__all__ = ["SPLITS", "Dataset", "Item", "load_dataset", "stratified_split"]
