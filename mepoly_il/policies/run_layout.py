"""The run directory layout shared by every Lightning module (MePoly stage 1/2 and DP)::

    <root>/checkpoints/{step=0001000.ckpt, ..., last.ckpt}
    <root>/<logger name>/version_N/{events.out.tfevents.*, metrics.csv, hparams.yaml}

where ``<root>`` is ``trainer.default_root_dir``, whatever the logger set-up.
"""

from __future__ import annotations

import os
import warnings


def arrange_run_outputs(trainer) -> None:
    """Add a CSV logger beside the first (TensorBoard) logger and pin default checkpoints to ``<root>/checkpoints``.

    The CSV logger shares the TensorBoard logger's version directory, so ``metrics.csv`` sits next to the event
    file. A ModelCheckpoint left at Lightning's default directory (inside the versioned log dir, which changes on
    every resume) is pointed at ``<root>/checkpoints`` so that ``--ckpt_path <root>/checkpoints/last.ckpt``
    resumes in place.
    """
    from lightning.pytorch.loggers import CSVLogger

    if trainer.loggers and not any(isinstance(lg, CSVLogger) for lg in trainer.loggers):
        first = trainer.loggers[0]
        version = first.version if isinstance(first.version, str) else f"version_{first.version}"
        with warnings.catch_warnings():
            # The shared directory already holds this run's TensorBoard file; Lightning warns that it "will delete
            # previous log files", but it only removes a metrics.csv, which a fresh version directory lacks.
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            csv = CSVLogger(save_dir=first.save_dir or trainer.default_root_dir, name=first.name or "", version=version)
            _ = csv.experiment  # create the writer (and run its directory check) inside the filter
        trainer.loggers = [*trainer.loggers, csv]
    default_dirs = {os.path.join(lg.log_dir, "checkpoints") for lg in trainer.loggers if lg.log_dir}
    for cb in trainer.checkpoint_callbacks:
        if cb.dirpath is not None and str(cb.dirpath) in default_dirs:
            cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
