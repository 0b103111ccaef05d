"""Experiment loggers that survive resumption.

Lightning's CSV logger deletes ``metrics.csv`` when its folder already exists, so a resumed run
would lose its loss curve. ``CSVLogger`` here keeps the file and, on the first write after a
restart, drops the rows logged after the checkpoint the run resumed from (they are logged again),
so the curve on disk is exactly the one of an uninterrupted run.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        self._resumed = os.path.isfile(self.metrics_file_path)
        if self._resumed:
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def save(self) -> None:
        if getattr(self, "_resumed", False) and self.metrics:
            first_new = min(int(m["step"]) for m in self.metrics)
            with open(self.metrics_file_path, newline="") as f:
                rows = [
                    r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) < first_new
                ]
            self.metrics = rows + self.metrics
            os.remove(self.metrics_file_path)
            self._resumed = False
        super().save()


class CSVLogger(_LightningCSVLogger):
    """``lightning``'s CSV logger, appending to ``metrics.csv`` across resumed runs."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
