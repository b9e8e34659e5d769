"""headstart: transfer learning for small labeled datasets.

Heavy libraries (torch, transformers, onnxruntime, scikit-learn) load only when a function needs them,
so `import headstart` and `headstart --help` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "HeadstartError": "headstart.errors",
    "create_backbone": "headstart.backbones",
    "list_backbones": "headstart.backbones",
    "Backbone": "headstart.backbones",
    "load_dataset": "headstart.data",
    "Dataset": "headstart.data",
    "embed": "headstart.features",
    "FeatureCache": "headstart.feature_cache",
    "ProbeClassifier": "headstart.api",
    "probe": "headstart.api",
    "load_run": "headstart.runs",
}

if TYPE_CHECKING:
    from headstart.api import ProbeClassifier, probe
    from headstart.backbones import Backbone, create_backbone, list_backbones
    from headstart.data import Dataset, load_dataset
    from headstart.errors import HeadstartError
    from headstart.feature_cache import FeatureCache
    from headstart.features import embed
    from headstart.runs import load_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


__all__ = [
    "Backbone",
    "Dataset",
    "FeatureCache",
    "HeadstartError",
    "ProbeClassifier",
    "__version__",
    "create_backbone",
    "embed",
    "list_backbones",
    "load_dataset",
    "load_run",
    "probe",
]
