"""Training loop, optimizers/schedules and IMP."""

from .loop import StopTraining, TrainResult, TrainState, evaluate, progress_bar, train
from .optim import LRSchedule, make_optimizer

__all__ = [
    "LRSchedule",
    "StopTraining",
    "TrainResult",
    "TrainState",
    "evaluate",
    "make_optimizer",
    "progress_bar",
    "train",
]
