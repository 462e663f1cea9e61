"""ManiSkill3 demonstrations -> mepoly-il datasets: the only data modules that import ``mani_skill`` / ``sapien``
(lazily, inside the simulator workers, through :func:`mepoly_il.envs.maniskill.import_maniskill`).

* :mod:`.generate`: :func:`generate` runs a task's demo source (from :mod:`mepoly_il.tasks`) in worker processes and
  keeps the first ``num_demos`` successful seeds as ManiSkill's own ``.h5`` + ``.json``.
* :mod:`.source`: :func:`read_source` opens and checks a ManiSkill ``.h5`` + ``.json`` pair.
* :mod:`.convert`: :func:`convert` replays them into the policy's observation and control mode and writes the zarr
  dataset; :func:`prepare` = generate + convert, raw files kept next to the output.
* :mod:`.replay`: :func:`replay_open_loop`, open-loop replay from a seed (faithfulness checks).
* :mod:`.pool` (simulator worker processes), :mod:`.timing` (where the time goes), :mod:`.sim` (shared settings).
"""

from mepoly_il.data.maniskill.convert import (
    EE_MODES,
    JOINT_MODES,
    OBS_MODES,
    ConvertResult,
    ConvertWorker,
    convert,
    default_control_mode,
    prepare,
    raw_dir_for,
)
from mepoly_il.data.maniskill.generate import (
    GenerateResult,
    GenerateWorker,
    demo_task,
    generate,
    load_solver,
    raw_paths,
)
from mepoly_il.data.maniskill.replay import replay_open_loop
from mepoly_il.data.maniskill.sim import SIM_BACKEND
from mepoly_il.data.maniskill.source import SourceDemos, read_source

__all__ = [
    "EE_MODES",
    "JOINT_MODES",
    "OBS_MODES",
    "SIM_BACKEND",
    "ConvertResult",
    "ConvertWorker",
    "GenerateResult",
    "GenerateWorker",
    "SourceDemos",
    "convert",
    "default_control_mode",
    "demo_task",
    "generate",
    "load_solver",
    "prepare",
    "raw_dir_for",
    "raw_paths",
    "read_source",
    "replay_open_loop",
]
