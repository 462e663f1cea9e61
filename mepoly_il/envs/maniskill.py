"""ManiSkill3 evaluation environments, and the package's one ManiSkill import (:func:`import_maniskill`).

This is the only ``envs`` module that imports ``mani_skill`` / ``sapien`` (besides the package's own task,
:mod:`.maniskill_reacharound`, which it imports to register, and :mod:`.maniskill_fast_ee`, the faster CPU path of
ManiSkill's end-effector controllers, which it installs); the demo pipeline
(:mod:`mepoly_il.data.maniskill`) imports the simulator through :func:`import_maniskill` too, so a broken install
fails with the same single line everywhere. Nothing here imports ``mepoly_il.data``.

The protocol follows ManiSkill's own IL baselines (``make_eval_envs``): state observations, the control mode of the
demonstrations, sparse reward, ``reconfiguration_freq=1`` and terminations ignored, so every episode runs exactly
``max_episode_steps`` and both ``success_once`` and ``success_at_end`` are defined.

Two backends behind one small interface (:class:`EvalVecEnv`):

* ``physx_cpu``: one process per env (ManiSkill refuses ``num_envs > 1`` on the CPU simulator), each wrapped in
  ``CPUGymWrapper``; ``SyncVectorEnv`` for one env, ``AsyncVectorEnv(context="forkserver")`` otherwise.
* ``physx_cuda``: ManiSkill's batched GPU simulator with ``num_envs`` parallel scenes (``ManiSkillVectorEnv``).

gymnasium 1.x: vector envs auto-reset on the step *after* truncation by default and drop that step's action, which
silently shortens fixed-length loops. We disable auto-reset and reset explicitly with a seed list per batch.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from mepoly_il.errors import UserError
from mepoly_il.tasks import find_task

SIM_BACKENDS = ("auto", "physx_cpu", "physx_cuda")


@dataclass(frozen=True)
class EvalEnvSpec:
    """Everything that defines an evaluation environment (recorded in ``eval_info.json`` provenance)."""

    env_id: str
    control_mode: str
    max_episode_steps: int
    obs_mode: str = "state"
    sim_backend: str = "physx_cpu"
    #: 1 = rebuild the scene at every reset (ManiSkill IL protocol). Costs ~0.17 s per reset on CPU; the four
    #: tabletop tasks randomize no geometry, so 0 gives the same initial states faster.
    reconfiguration_freq: int = 1
    render: bool = False
    #: side of the square video frames (the human-render camera), small because CPU rendering is slow.
    render_size: int = 128

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_max_episode_steps(env_id: str) -> int | None:
    """The registered task's episode limit (:class:`mepoly_il.tasks.TaskSpec`), or None for an unregistered env."""
    task = find_task(env_id)
    return task.max_episode_steps if task is not None else None


def resolve_sim_backend(requested: str) -> str:
    """``auto`` -> ``physx_cuda`` when CUDA is available, else ``physx_cpu``; validates explicit choices."""
    if requested not in SIM_BACKENDS:
        raise UserError(f"--sim-backend {requested!r} is not supported; choose one of {', '.join(SIM_BACKENDS)}")
    if requested == "auto":
        return "physx_cuda" if torch.cuda.is_available() else "physx_cpu"
    if requested == "physx_cuda" and not torch.cuda.is_available():
        raise UserError("--sim-backend physx_cuda needs a CUDA device and none is visible; use physx_cpu or auto")
    return requested


def import_maniskill():
    """Import gymnasium with ManiSkill's environments registered; returns the ``gymnasium`` module.

    A missing or broken simulator install (ManiSkill, sapien, the Vulkan driver) becomes one :class:`UserError` line.
    """
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the environments)

        import mepoly_il.envs.maniskill_reacharound  # noqa: F401  (registers this package's ReachAround-v1)
        from mepoly_il.envs import maniskill_fast_ee

        maniskill_fast_ee.install()  # same trajectories, less per-step overhead on the CPU simulator
    except Exception as err:  # a broken simulator install should fail with one line, not a deep traceback
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        raise UserError(
            f"cannot import ManiSkill ({type(err).__name__}: {reason}); run `make setup` "
            "(installs mani-skill and a Vulkan driver via scripts/ensure-vulkan.sh)"
        ) from None
    import logging

    # ManiSkill sets up its logger on import; its start-up warnings (no CUDA renderer, not a git install) are noise
    # for state-only CPU simulation.
    for name in ("mani_skill", "mani_skill "):  # 3.0.1 names its logger with a trailing space
        logging.getLogger(name).setLevel(logging.ERROR)
    return gym


def _make_kwargs(spec: EvalEnvSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        obs_mode=spec.obs_mode,
        control_mode=spec.control_mode,
        reward_mode="sparse",
        max_episode_steps=spec.max_episode_steps,
        sim_backend=spec.sim_backend,
        reconfiguration_freq=spec.reconfiguration_freq,
    )
    if spec.render:
        kwargs["render_mode"] = "rgb_array"
        kwargs["human_render_camera_configs"] = dict(width=spec.render_size, height=spec.render_size)
    return kwargs


def _make_cpu_env(spec: EvalEnvSpec):
    """One single-process CPU env (module level so forkserver workers can unpickle it)."""
    gym = import_maniskill()
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    env = gym.make(spec.env_id, **_make_kwargs(spec))
    # ManiSkill ends every scene rebuild (each reset, with reconfiguration_freq=1) in a full gc.collect(), to free GPU
    # memory. In a process holding torch and the simulator a PushCube rebuild then took 0.26-0.28 s on a 2-core CPU,
    # 0.05 s without that traversal. Freezing what exists now limits those collections to the objects created since:
    # the scenes of later episodes, which they still free.
    gc.collect()
    gc.freeze()
    return CPUGymWrapper(env, ignore_terminations=True, record_metrics=True)


@dataclass
class StepOut:
    """One vector step: obs (N, Ds) float32 tensor, reward (N,) float, success (N,) bool, truncated (N,) bool."""

    obs: torch.Tensor
    reward: np.ndarray
    success: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any]


class EvalVecEnv:
    """N evaluation envs stepped in lock-step; all episodes of a batch start and end together."""

    spec: EvalEnvSpec
    num_envs: int
    obs_dim: int
    act_dim: int
    control_mode: str

    def reset(self, seeds: list[int]) -> torch.Tensor:
        """Reset every env with its own seed (len(seeds) == num_envs) -> obs (N, Ds) float32."""
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> StepOut:
        """actions (N, Da) in env units."""
        raise NotImplementedError

    def render(self) -> list[np.ndarray]:
        """One (H, W, 3) uint8 frame per env."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> EvalVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _success_of(info: dict[str, Any], n: int) -> np.ndarray:
    if "success" not in info:
        raise RuntimeError("the env reports no info['success']; only tasks with a success criterion are supported")
    return np.asarray(info["success"], dtype=bool).reshape(n)


class CPUVecEnv(EvalVecEnv):
    """``physx_cpu`` envs, one per process (``AsyncVectorEnv``) or in-process for ``num_envs == 1``."""

    def __init__(self, spec: EvalEnvSpec, num_envs: int) -> None:
        gym = import_maniskill()
        self.spec, self.num_envs = spec, int(num_envs)
        thunks = [functools.partial(_make_cpu_env, spec)] * self.num_envs
        disabled = gym.vector.AutoresetMode.DISABLED
        # In-process, the env freezes this process's objects for the GC (see _make_cpu_env); close() thaws them.
        self._thaw = self.num_envs == 1 and gc.get_freeze_count() == 0
        if self.num_envs == 1:
            self._venv = gym.vector.SyncVectorEnv(thunks, autoreset_mode=disabled)
        else:
            # forkserver: sapien/Vulkan state must not be inherited through fork from a parent that already
            # created a scene (e.g. the training process). Preloading the simulator into the fork server makes
            # the workers fork from one import instead of importing it each (25 s -> 15 s for 2 workers, 2 cores).
            import multiprocessing

            multiprocessing.get_context("forkserver").set_forkserver_preload(
                ["mepoly_il.envs.maniskill", "mani_skill.envs", "gymnasium"]
            )
            self._venv = gym.vector.AsyncVectorEnv(thunks, context="forkserver", autoreset_mode=disabled)
        self.obs_dim = int(np.prod(self._venv.single_observation_space.shape))
        self.act_dim = int(np.prod(self._venv.single_action_space.shape))
        modes = set(self._venv.get_attr("control_mode"))
        self.control_mode = modes.pop() if len(modes) == 1 else str(modes)

    def reset(self, seeds: list[int]) -> torch.Tensor:
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        obs, _ = self._venv.reset(seed=[int(s) for s in seeds])
        return torch.as_tensor(np.asarray(obs, dtype=np.float32))

    def step(self, actions: torch.Tensor) -> StepOut:
        act = np.asarray(actions.detach().cpu().numpy(), dtype=np.float32).reshape(self.num_envs, self.act_dim)
        obs, reward, _terminated, truncated, info = self._venv.step(act)
        return StepOut(
            obs=torch.as_tensor(np.asarray(obs, dtype=np.float32)),
            reward=np.asarray(reward, dtype=np.float64).reshape(self.num_envs),
            success=_success_of(info, self.num_envs),
            truncated=np.asarray(truncated, dtype=bool).reshape(self.num_envs),
            info=info,
        )

    def render(self) -> list[np.ndarray]:
        return [np.asarray(f, dtype=np.uint8) for f in self._venv.call("render")]

    def close(self) -> None:
        self._venv.close()
        if self._thaw:
            gc.unfreeze()
            self._thaw = False


class GPUVecEnv(EvalVecEnv):
    """``physx_cuda``: ManiSkill's batched GPU simulator, ``num_envs`` scenes in one process.

    Not exercised by the CPU test suite; kept minimal and separate from the CPU path on purpose.
    """

    def __init__(self, spec: EvalEnvSpec, num_envs: int) -> None:
        gym = import_maniskill()
        from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

        self.spec, self.num_envs = spec, int(num_envs)
        env = gym.make(spec.env_id, num_envs=self.num_envs, **_make_kwargs(spec))
        self._venv = ManiSkillVectorEnv(env, auto_reset=False, ignore_terminations=True, record_metrics=True)
        self.obs_dim = int(np.prod(self._venv.single_observation_space.shape))
        self.act_dim = int(np.prod(self._venv.single_action_space.shape))
        self.control_mode = str(self._venv.base_env.control_mode)

    def reset(self, seeds: list[int]) -> torch.Tensor:
        obs, _ = self._venv.reset(seed=[int(s) for s in seeds])
        return obs.float()

    def step(self, actions: torch.Tensor) -> StepOut:
        obs, reward, _terminated, truncated, info = self._venv.step(actions.to(self._venv.device))
        return StepOut(
            obs=obs.float(),
            reward=reward.detach().cpu().numpy().astype(np.float64).reshape(self.num_envs),
            success=info["success"].detach().cpu().numpy().astype(bool).reshape(self.num_envs),
            truncated=torch.as_tensor(truncated).detach().cpu().numpy().astype(bool).reshape(self.num_envs),
            info=info,
        )

    def render(self) -> list[np.ndarray]:
        frames = self._venv.render()
        frames = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if frames.ndim == 3:  # some versions return a single frame when num_envs == 1
            frames = frames[None]
        return [f.astype(np.uint8) for f in frames]

    def close(self) -> None:
        self._venv.close()


def make_eval_env(spec: EvalEnvSpec, num_envs: int = 1) -> EvalVecEnv:
    """Build ``num_envs`` evaluation envs for ``spec`` and check they match it (control mode)."""
    if num_envs < 1:
        raise UserError(f"--num-envs must be >= 1, got {num_envs}")
    if spec.obs_mode != "state":
        raise UserError(f"obs_mode {spec.obs_mode!r} is not supported by the evaluator; only 'state' policies")
    if spec.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be >= 1, got {spec.max_episode_steps}")
    gym = import_maniskill()
    if spec.env_id not in gym.registry:
        raise UserError(f"environment {spec.env_id!r} is not registered in ManiSkill; check the dataset's env_id")
    backend = spec.sim_backend
    if backend == "auto":
        spec = replace(spec, sim_backend=resolve_sim_backend("auto"))
    env: EvalVecEnv = GPUVecEnv(spec, num_envs) if spec.sim_backend == "physx_cuda" else CPUVecEnv(spec, num_envs)
    if env.control_mode != spec.control_mode:
        env.close()
        raise UserError(
            f"{spec.env_id}: the env runs control mode {env.control_mode!r} but the policy was trained on "
            f"{spec.control_mode!r}; re-convert the demos or evaluate with the matching control mode"
        )
    return env
