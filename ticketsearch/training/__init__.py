"""Training loop, optimizers/schedules and IMP."""

from .loop import StopTraining, TrainResult, TrainState, evaluate, progress_bar, train
from .optim import LRSchedule, make_optimizer
from .schedule import MaskSchedule, MaskUpdate

__all__ = [
    "LRSchedule",
    "MaskSchedule",
    "MaskUpdate",
    "StopTraining",
    "TrainResult",
    "TrainState",
    "evaluate",
    "make_optimizer",
    "progress_bar",
    "train",
]
