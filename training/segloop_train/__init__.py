"""segloop_train: turns training folders (or labelled samples) into new, evaluated model packages.

No Qt, no napari.  :func:`finetune` is the entry point (CLI: ``segloop-train``, or
``python -m segloop_train``); ``segloop_train.train`` and ``segloop_train.recipes`` hold the
from-samples loop and the recipes of the bundled models; :func:`run_loop` simulates active
learning (CLI: ``segloop loop``).
"""

from segloop_train.augment import AugmentConfig
from segloop_train.data import Sample, instance_targets
from segloop_train.distributed import PeerFailedError
from segloop_train.finetune import (
    FinetuneOptions,
    FinetuneResult,
    TrainingDivergedError,
    TrainingError,
    TrainingOutOfMemoryError,
    evaluate_samples,
    finetune,
    run_finetune,
)
from segloop_train.folders import load_folders
from segloop_train.loop import LoopResult, ScratchModel, run_loop
from segloop_train.train import TrainConfig, evaluate, train, train_and_save

__all__ = ["AugmentConfig", "FinetuneOptions", "FinetuneResult", "PeerFailedError", "Sample", "TrainConfig",
           "TrainingDivergedError", "TrainingError", "TrainingOutOfMemoryError", "evaluate", "evaluate_samples",
           "finetune", "instance_targets", "load_folders", "LoopResult", "run_finetune", "run_loop", "ScratchModel",
           "train", "train_and_save"]
