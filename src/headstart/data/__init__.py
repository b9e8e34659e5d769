"""Data in: labeled items, splits, decoding.

`load_dataset` (load.py) picks the reader for a path: layouts.py (class folders, split folders, manifests
of files) or text.py (tables, folders of .txt); both end in dataset.py's `assemble_dataset` (copies,
classes) and splits.py's seeded stratified split. items.py: `Item` and `SPLITS`. images.py and audio.py
decode files; leakage.py and grouped_split.py find and regroup copies across splits; unlabeled.py and
unlabeled_text.py read data without labels.
"""

from headstart.data.dataset import Dataset
from headstart.data.items import SPLITS, Item
from headstart.data.load import load_dataset
from headstart.data.splits import stratified_split

__all__ = ["SPLITS", "Dataset", "Item", "load_dataset", "stratified_split"]
