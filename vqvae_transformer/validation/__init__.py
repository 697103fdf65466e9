"""vqvae_transformer.validation: the judge (user classifier), the §4 metrics and the validation report."""

from ..models.judge import Judge, features, load_or_train_judge, predict, train_judge
from .report import run_validation
from .thresholds import Thresholds

__all__ = ["Judge", "Thresholds", "features", "load_or_train_judge", "predict", "run_validation", "train_judge"]
