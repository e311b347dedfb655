"""Training loop, optimizers/schedules and IMP."""

from .loop import TrainResult, TrainState, evaluate, train
from .optim import LRSchedule, make_optimizer

__all__ = ["LRSchedule", "TrainResult", "TrainState", "evaluate", "make_optimizer", "train"]
