"""The task registry: every fact about an imitation-learning task, declared once.

Data generation, evaluation environments, configs, benchmarks and the Table 1 scripts read these entries; nothing
else in the package repeats them. Adding a task means one :func:`register_task` call (here for built-in tasks, or
in user code before the CLI runs) plus, if its demos come from a new source, that source: a function with the
calling convention of ManiSkill's motion-planning solutions, named by ``demo_source = "package.module:function"``.

Horizons follow the paper's protocol (To = 2 observations, Ta actions executed of T = 16 predicted; PushT acts one
step at a time, as ManiSkill's Diffusion Policy baseline does). Episode limits are about twice the mean
motion-planning demo length: ManiSkill's registered limits are tuned for RL and cut slow successes short.

This module imports nothing from the rest of the package except the error type, so every layer may read it.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mepoly_il.errors import UserError

#: Demo sources: ``motion_planner:<solver>`` names a function of ManiSkill's panda motion-planning solutions
#: (``mani_skill.examples.motionplanning.panda.solutions``); ``package.module:function`` names any other function with
#: their calling convention, ``solve(env, seed=..., debug=False, vis=False)`` returning the list of step results (the
#: last one holds ``success`` and ``elapsed_steps``) or -1 when it gives up; ``None`` means this package has no way to
#: make demos for the task yet (demos made elsewhere can still be converted).
MOTION_PLANNER = "motion_planner"
#: The control mode of a task that names none (and of demos converted without a registered task).
DEFAULT_CONTROL_MODE = "pd_ee_delta_pos"


@dataclass(frozen=True)
class TaskSpec:
    """One imitation-learning task.

    Attributes:
        env_id: the ManiSkill environment id (e.g. ``"PushCube-v1"``).
        demo_source: where demos come from, ``"motion_planner:<solver function>"``, ``"package.module:function"``
            (see :data:`MOTION_PLANNER`), or ``None`` if none exists.
        max_episode_steps: evaluation (and demo replay) episode limit.
        control_mode: the controller the policies act through (demos are converted to it).
        obs_dim, act_dim: widths of the state observation and of the action in ``control_mode``.
        obs_horizon, act_horizon, pred_horizon: To, Ta and T of the action-chunk policies.
        eval_episodes: episodes per final evaluation (the protocol's 100).
        demo_control_mode: the controller the demo source acts through (what ``data generate`` records; ManiSkill's
            motion planners emit ``pd_joint_pos`` targets, which ``data convert`` turns into ``control_mode``).
        mode_fn: ``"package.module:function"`` naming a function that maps one episode's state observations
            ((T, obs_dim) numpy) to a short label of the strategy it followed (e.g. which side of an obstacle it
            passed), or ``None``. Conversion stores each demo's label in the dataset and evaluation labels every
            rollout from its own trajectory with the same function (see :func:`load_mode_fn`).
    """

    env_id: str
    demo_source: str | None
    max_episode_steps: int
    obs_dim: int
    act_dim: int
    control_mode: str = DEFAULT_CONTROL_MODE
    obs_horizon: int = 2
    act_horizon: int = 8
    pred_horizon: int = 16
    eval_episodes: int = 100
    demo_control_mode: str = "pd_joint_pos"
    mode_fn: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise UserError(f"TaskSpec env_id must be a non-empty string, got {self.env_id!r}")
        if self.demo_source is not None:
            module, _, function = str(self.demo_source).partition(":")
            if not module or not function:
                raise UserError(
                    f"task {self.env_id}: demo_source {self.demo_source!r} is not 'motion_planner:<solver>' or "
                    "'package.module:function'; fix it or pass None"
                )
        if self.mode_fn is not None:
            module, _, function = str(self.mode_fn).partition(":")
            if not module or not function:
                raise UserError(
                    f"task {self.env_id}: mode_fn {self.mode_fn!r} is not 'package.module:function'; "
                    "fix it or pass None"
                )
        for name in (
            "max_episode_steps",
            "obs_dim",
            "act_dim",
            "obs_horizon",
            "act_horizon",
            "pred_horizon",
            "eval_episodes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise UserError(f"task {self.env_id}: {name} must be an integer >= 1, got {value!r}")
        if self.obs_horizon - 1 + self.act_horizon > self.pred_horizon:
            raise UserError(
                f"task {self.env_id}: obs_horizon - 1 + act_horizon ({self.obs_horizon - 1 + self.act_horizon}) "
                f"exceeds pred_horizon ({self.pred_horizon}); shorten act_horizon or lengthen pred_horizon"
            )

    @property
    def solver(self) -> str | None:
        """The motion-planning solver function name, or None when demos do not come from the motion planner."""
        if self.demo_source and self.demo_source.startswith(MOTION_PLANNER + ":"):
            return self.demo_source.split(":", 1)[1]
        return None

    def horizons(self) -> dict[str, int]:
        return {"obs_horizon": self.obs_horizon, "act_horizon": self.act_horizon, "pred_horizon": self.pred_horizon}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TASKS: dict[str, TaskSpec] = {}


def import_callable(ref: str, field: str, prefix: str = "", module: Any = None) -> Callable:
    """``"package.module:function"`` -> the function (looked up in ``module`` when given); a one-line
    :class:`UserError` starting with ``prefix`` and naming ``field`` when it cannot be imported."""
    module_name, _, function = ref.partition(":")
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UserError(
                f"{prefix}{field} {ref!r}: cannot import {module_name} ({err}); fix the task's {field}"
            ) from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"{prefix}{field} {ref!r}: {module.__name__} has no function {function!r}")
    return fn


def load_mode_fn(spec: TaskSpec) -> Callable[[Any], str] | None:
    """The task's mode-label function (:attr:`TaskSpec.mode_fn`) imported, or None when the task declares none."""
    if spec.mode_fn is None:
        return None
    return import_callable(spec.mode_fn, "mode_fn", prefix=f"task {spec.env_id}: ")


def register_task(spec: TaskSpec, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry (``replace=True`` to redefine an existing id); returns it."""
    if spec.env_id in TASKS and not replace:
        raise UserError(f"task {spec.env_id} is already registered; pass replace=True to redefine it")
    TASKS[spec.env_id] = spec
    return spec


def get_task(env_id: str) -> TaskSpec:
    """The registered spec of ``env_id``; a :class:`UserError` naming the known tasks otherwise."""
    try:
        return TASKS[env_id]
    except KeyError:
        raise UserError(
            f"unknown task {env_id!r}; registered tasks: {', '.join(TASKS)} "
            "(add one with mepoly_il.tasks.register_task)"
        ) from None


def find_task(env_id: str) -> TaskSpec | None:
    """Like :func:`get_task` but ``None`` for an unregistered id (for code that also serves arbitrary envs)."""
    return TASKS.get(env_id)


def task_ids(with_demos: bool = False) -> list[str]:
    """Registered ids in registration order; ``with_demos`` keeps only tasks this package can make demos for."""
    return [t for t, s in TASKS.items() if s.demo_source or not with_demos]


register_task(TaskSpec("PushCube-v1", f"{MOTION_PLANNER}:solvePushCube", max_episode_steps=100, obs_dim=35, act_dim=4))
register_task(TaskSpec("PickCube-v1", f"{MOTION_PLANNER}:solvePickCube", max_episode_steps=100, obs_dim=42, act_dim=4))
register_task(
    TaskSpec("StackCube-v1", f"{MOTION_PLANNER}:solveStackCube", max_episode_steps=200, obs_dim=48, act_dim=4)
)
register_task(
    TaskSpec(
        "PushT-v1",
        # A scripted closed-loop pushing expert (ManiSkill has no motion planner for PushT): 86 of 100 random initial
        # states are solved within the limit; unsolved ones start turned by more than 90 deg (see its module).
        "mepoly_il.data.maniskill_pusht:solve_pusht",
        max_episode_steps=150,
        obs_dim=31,
        act_dim=6,
        control_mode="pd_ee_delta_pose",
        demo_control_mode="pd_ee_delta_pose",
        act_horizon=1,
        mode_fn="mepoly_il.data.maniskill_pusht:pusht_mode",  # the half of the T the tool touched first
    )
)
register_task(
    TaskSpec(
        "ReachAround-v1",
        # Defined by this package (mepoly_il/envs/maniskill_reacharound.py): reach a goal behind a pillar, passing it
        # on the left or the right; the scripted expert picks the side at random per demo, so the demos are bimodal
        # and their average runs into the pillar. Demos last about 15 steps.
        "mepoly_il.data.maniskill_reacharound:solve_reacharound",
        max_episode_steps=40,
        obs_dim=34,
        act_dim=4,
        demo_control_mode="pd_ee_delta_pos",
        mode_fn="mepoly_il.envs.maniskill_reacharound:passing_side",
    )
)
