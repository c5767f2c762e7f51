"""segloop_train: turns labelled samples (and, soon, training folders) into model packages.

No Qt, no napari.  See ``segloop_train.train`` and ``segloop_train.recipes``.
"""

from segloop_train.data import Sample, instance_targets
from segloop_train.train import TrainConfig, evaluate, train, train_and_save

__all__ = ["Sample", "TrainConfig", "evaluate", "instance_targets", "train", "train_and_save"]
