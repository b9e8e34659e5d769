"""Domain-adaptive continued pretraining: a text backbone learns the language of unlabeled domain text
(masked LM for encoders, causal LM for decoders) and is saved as a new, carded backbone."""

from headstart.data.unlabeled_text import UnlabeledTexts, read_unlabeled
from headstart.pretrain.pretrain import AdaptReport, adapt

__all__ = ["AdaptReport", "UnlabeledTexts", "adapt", "read_unlabeled"]
