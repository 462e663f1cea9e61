"""``ReachAround-v1``: a ManiSkill reach task with two equally good ways to the goal, registered by this package.

The Panda's TCP starts 6 cm above the table (a fixed start pose plus the table scene's joint noise, which moves it
by a centimetre or two) and must reach a goal point 18 cm straight ahead at about the same height; a kinematic pillar
stands between the two. The TCP can pass
the pillar on its left (+y) or on its right (-y); the straight line, which is the average of the two ways, runs
into the pillar. A robot that touches the pillar at any step of an episode has failed that episode, even if it
reaches the goal afterwards.

* **Randomization** (per episode, from the reset seed): goal and pillar shift together by up to
  ``CENTER_JITTER`` in x and y, then the pillar alone by up to ``PILLAR_JITTER``; the robot's start joints
  (:data:`START_QPOS`, TCP 6 cm above the table) get the table scene's usual noise (std 0.02 rad).
* **Success**: the TCP is within ``GOAL_THRESH`` of the goal and no robot link has touched the pillar since the
  reset (a per-env flag updated in :meth:`ReachAroundEnv.evaluate`, which ManiSkill calls after every step).
* **State observation** (``obs_mode="state"``): the robot's joint positions and velocities, the TCP pose, the
  goal and pillar positions and the TCP-to-goal vector (:data:`OBS_DIM` numbers).

:func:`passing_side` reads from the TCP path which side of the pillar it went around (the task's mode label).

Importing this module registers the environment with ManiSkill; :func:`mepoly_il.envs.maniskill.import_maniskill`
does, so every ``gym.make`` that goes through the package finds it.
"""

from __future__ import annotations

import numpy as np
import sapien
import torch
from mani_skill.agents.robots import Panda
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs import Pose

ENV_ID = "ReachAround-v1"
#: Episode limit ManiSkill registers (the package's task registry sets the IL evaluation limit).
REGISTERED_MAX_STEPS = 40
#: TCP-to-goal distance (m) that counts as reached.
GOAL_THRESH = 0.025
#: Arm joints of the start pose: the TCP 6 cm above the table at x = -0.05, y = 0, the hand pointing down as in the
#: table scene's rest pose (joints 2, 4 and 6 changed together: joint 6 = joint 2 - joint 4 keeps it vertical).
START_QPOS = (0.0, 0.4977, 0.0, -2.1535, 0.0, 2.6512, np.pi / 4)
#: Nominal goal and pillar centre (x, y) in the table frame and the goal's height (m); the goal is at the start
#: pose's height, so the shortest way is straight ahead.
GOAL_XY = (0.13, 0.0)
GOAL_Z = 0.06
PILLAR_XY = (0.04, 0.0)
#: Pillar half sizes (m): 6 cm wide across the way (y), 4 cm deep, 14 cm tall. The hand (about 21 cm across its
#: fingers' opening direction, which is y) hangs 3-13 cm above the TCP, so it must step aside by about 14 cm to
#: pass; the wrist above it clears the pillar's top. Going over instead would mean lifting the TCP by 9 cm.
PILLAR_HALF = (0.02, 0.03, 0.07)
#: Uniform jitter (m, +-) of the goal and pillar together, and of the pillar alone.
CENTER_JITTER = 0.01
PILLAR_JITTER = 0.005
#: Width of the state observation: qpos 9, qvel 9, tcp pose 7, goal 3, pillar 3, tcp-to-goal 3.
OBS_DIM = 34
#: Where the state observation holds the TCP position, the goal and the pillar position (ManiSkill flattens the
#: agent's qpos and qvel, then :meth:`ReachAroundEnv._get_obs_extra` in insertion order).
TCP_POS = slice(18, 21)
GOAL_POS = slice(25, 28)
PILLAR_POS = slice(28, 31)
#: Mode labels of :func:`passing_side`.
MODES = ("left", "right", "none")


def passing_side(states: np.ndarray) -> str:
    """The side of the pillar one episode's TCP passed on: ``"left"`` (+y), ``"right"`` (-y) or ``"none"``.

    ``states``: (T, OBS_DIM) state observations of one episode. The label is read where the TCP is closest (in x)
    to the pillar's centre among the steps it is level with the pillar (within 2 cm of its depth): ``"none"`` when it
    never got level (stopped in front of it) or was level but not clear of its sides (ran into it or over it).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != OBS_DIM:
        raise ValueError(f"passing_side: expected (T, {OBS_DIM}) state observations, got {states.shape}")
    tcp, pillar = states[:, TCP_POS], states[:, PILLAR_POS]
    dx = np.abs(tcp[:, 0] - pillar[:, 0])
    level = np.flatnonzero(dx <= PILLAR_HALF[0] + 0.02)
    if level.size == 0:
        return "none"
    i = level[np.argmin(dx[level])]
    dy = tcp[i, 1] - pillar[i, 1]
    if abs(dy) <= PILLAR_HALF[1]:
        return "none"
    return "left" if dy > 0 else "right"


@register_env(ENV_ID, max_episode_steps=REGISTERED_MAX_STEPS)
class ReachAroundEnv(BaseEnv):
    """Reach a goal behind a pillar without touching it (see the module docstring)."""

    SUPPORTED_ROBOTS = ["panda"]
    agent: Panda

    def __init__(self, *args, robot_uids="panda", robot_init_qpos_noise=0.02, **kwargs):
        self.robot_init_qpos_noise = robot_init_qpos_noise
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    @property
    def _default_sensor_configs(self):
        pose = sapien_utils.look_at(eye=[0.3, 0, 0.6], target=[-0.1, 0, 0.1])
        return [CameraConfig("base_camera", pose=pose, width=128, height=128, fov=np.pi / 2, near=0.01, far=100)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at([0.5, 0.6, 0.6], [0.05, 0.0, 0.15])
        return CameraConfig("render_camera", pose=pose, width=512, height=512, fov=1, near=0.01, far=100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=[-0.615, 0, 0]))

    def _load_scene(self, options: dict):
        self.table_scene = TableSceneBuilder(env=self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        # Kinematic and lifted 1 mm off the table: its only contacts are with the robot.
        self.pillar = actors.build_box(
            self.scene,
            half_sizes=list(PILLAR_HALF),
            color=[0.55, 0.35, 0.2, 1],
            name="pillar",
            body_type="kinematic",
            initial_pose=sapien.Pose(p=[*PILLAR_XY, PILLAR_HALF[2] + 1e-3]),
        )
        self.goal_site = actors.build_sphere(
            self.scene,
            radius=GOAL_THRESH,
            color=[0, 1, 0, 1],
            name="goal_site",
            body_type="kinematic",
            add_collision=False,
            initial_pose=sapien.Pose(p=[*GOAL_XY, GOAL_Z]),
        )
        self._hidden_objects.append(self.goal_site)

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        with torch.device(self.device):
            b = len(env_idx)
            self.table_scene.initialize(env_idx)
            qpos = torch.tensor([*START_QPOS, 0.04, 0.04]).repeat(b, 1)
            qpos[:, :7] += torch.randn((b, 7)) * self.robot_init_qpos_noise
            self.agent.reset(qpos)
            centre = (torch.rand((b, 2)) * 2 - 1) * CENTER_JITTER
            goal = torch.zeros((b, 3))
            goal[:, :2] = torch.tensor(GOAL_XY) + centre
            goal[:, 2] = GOAL_Z
            self.goal_site.set_pose(Pose.create_from_pq(goal))
            pillar = torch.zeros((b, 3))
            pillar[:, :2] = torch.tensor(PILLAR_XY) + centre + (torch.rand((b, 2)) * 2 - 1) * PILLAR_JITTER
            pillar[:, 2] = PILLAR_HALF[2] + 1e-3
            self.pillar.set_pose(Pose.create_from_pq(pillar))
            if not hasattr(self, "_touched") or self._touched.shape[0] != self.num_envs:
                self._touched = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
            self._touched[env_idx] = False

    def _pillar_contact(self) -> torch.Tensor:
        """(num_envs,) bool: some body pushes on the pillar at this step (only the robot can)."""
        if self.scene.gpu_sim_enabled:
            return torch.linalg.norm(self.pillar.get_net_contact_forces(), dim=-1) > 1e-3
        entity = self.pillar._bodies[0].entity
        contacts = sapien_utils.get_cpu_actor_contacts(self.scene.px.get_contacts(), entity)
        # The sum of absolute impulses: opposite contacts (two fingers on both faces) must not cancel out.
        total = sum(float(np.abs(p.impulse).sum()) for c, _ in contacts for p in c.points)
        return torch.tensor([total > 1e-6], device=self.device)

    def evaluate(self):
        touched = self._pillar_contact()
        # The reset's own evaluation sees the contacts of the step before it (another episode): skip it.
        self._touched |= touched & (self._elapsed_steps > 0)
        dist = torch.linalg.norm(self.agent.tcp.pose.p - self.goal_site.pose.p, dim=-1)
        reached = dist < GOAL_THRESH
        return {"success": reached & ~self._touched, "reached": reached, "touched": self._touched.clone()}

    def _get_obs_extra(self, info: dict):
        obs = dict(tcp_pose=self.agent.tcp.pose.raw_pose, goal_pos=self.goal_site.pose.p)
        if self.obs_mode_struct.use_state:
            obs.update(
                pillar_pos=self.pillar.pose.p,
                tcp_to_goal_pos=self.goal_site.pose.p - self.agent.tcp.pose.p,
            )
        return obs

    def compute_dense_reward(self, obs, action, info: dict):
        dist = torch.linalg.norm(self.agent.tcp.pose.p - self.goal_site.pose.p, dim=-1)
        reward = 1 - torch.tanh(5 * dist)
        reward[info["touched"]] = 0.0
        reward[info["success"]] = 2.0
        return reward

    def compute_normalized_dense_reward(self, obs, action, info: dict):
        return self.compute_dense_reward(obs, action, info) / 2.0
