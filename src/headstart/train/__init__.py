"""The fine-tuning engine: one loop (loop.Trainer) runs any recipe (headstart.recipes)."""

from headstart.train.api import FitReport, fit
from headstart.train.loop import Split, Trainer

__all__ = ["FitReport", "Split", "Trainer", "fit"]
