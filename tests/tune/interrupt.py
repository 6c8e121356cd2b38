"""A Tune callback that interrupts a sweep, for the sweep tests (its own module: it imports Ray Tune)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ray.tune import Callback


class InterruptOnFirstResult(Callback):
    """Sends this process SIGINT when trial ``variant`` reports, while ``flag`` exists (deleted on firing).

    Tune keeps its callbacks in the saved sweep; the flag keeps the restored sweep from firing again.
    """

    def __init__(self, variant: str, flag: Path) -> None:
        self.variant, self.flag = variant, flag

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.config["tune.variant"] == self.variant and self.flag.exists():
            self.flag.unlink()
            os.kill(os.getpid(), signal.SIGINT)
