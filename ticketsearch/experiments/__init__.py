"""Run directories, the runner (persistence, resume, locking) and controls; methods live in ``methods``."""
