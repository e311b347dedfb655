"""Training loop, optimizers/schedules and IMP."""

from .loop import StopTraining, TrainResult, TrainState, evaluate, train
from .optim import LRSchedule, make_optimizer

__all__ = ["LRSchedule", "StopTraining", "TrainResult", "TrainState", "evaluate", "make_optimizer", "train"]
