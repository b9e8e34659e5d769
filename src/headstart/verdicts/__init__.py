"""Verdicts over frozen features: which backbone (rank, LogME), how far the domain, how labels pay off
(curve), what to try first (recommend). Leakage lives with the data (headstart.data.leakage)."""

from headstart.verdicts.logme import logme
from headstart.verdicts.recommend import agree, recommend

__all__ = ["agree", "logme", "recommend"]
