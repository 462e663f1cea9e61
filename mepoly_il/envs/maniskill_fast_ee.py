"""A faster ``set_action`` for ManiSkill's end-effector controllers on the CPU simulator.

ManiSkill's ``PDEEPosController`` and ``PDEEPoseController`` (the ``pd_ee_delta_pos`` / ``pd_ee_delta_pose`` arm
controllers of the tasks here) do their pose arithmetic on batched torch ``Pose`` objects, even for the CPU
simulator's single env: each control step builds about 16 poses and 13 quaternion products out of one-element
tensors. That Python/torch overhead was 4.5 ms of a 7 ms PushCube step on a 2-core CPU, where the physics took
0.7 ms and the inverse kinematics 0.3 ms.

:func:`install` replaces the controllers' ``set_action`` with one that does the same float32 operations, in the
same order, on numpy scalars, then calls ManiSkill's own inverse kinematics and drive-target code. The quaternion
formulas below are ManiSkill's (``mani_skill.utils.geometry.rotation_conversions``: raw product, inverse, rotation of
a point, standardization to a non-negative real part; ``Pose.inv`` and ``Pose.__mul__``); the pose controller's
Euler-angle conversion stays in ManiSkill's torch functions. So the target pose, and with it the joint targets and
the whole trajectory, come out bit for bit the same (checked step by step against the original in
``tests/test_maniskill_fast_ee.py``).

The fast path only takes what it reproduces exactly: the CPU simulator with one env, delta actions without a
virtual target, the position controller in the ``root_translation`` frame and the pose controller in the
``root_translation:root_aligned_body_rotation`` frame (ManiSkill's defaults). Everything else, and any ManiSkill
whose controllers lack what is used here, goes to ManiSkill's original method. ``MEPOLY_STOCK_EE_CONTROL=1`` turns
the fast path off.
"""

from __future__ import annotations

import os

import numpy as np

_F32 = np.float32
_IDENTITY = np.array([1.0, 0.0, 0.0, 0.0], dtype=_F32)
_CONJ = np.array([1.0, -1.0, -1.0, -1.0], dtype=_F32)
_ZERO = np.zeros(1, dtype=_F32)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions (w, x, y, z) in the inputs' dtype, term order as ManiSkill's
    ``quaternion_raw_multiply`` (so float32 inputs give its float32 results exactly)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        )
    )


def _rotate(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``q`` applied to the point ``p``: q * (0, p) * conj(q), as ManiSkill's ``quaternion_apply``."""
    return quat_mul(quat_mul(q, np.concatenate((_ZERO, p))), q * _CONJ)[1:]


def _compose(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose product (p1, q1) * (p2, q2), as ManiSkill's ``Pose.__mul__`` (product standardized to w >= 0)."""
    q = quat_mul(q1, q2)
    if q[0] < 0:
        q = -q
    return p1 + _rotate(q1, p2), q


def _invert(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse pose, as ManiSkill's ``Pose.inv``."""
    q_inv = q * _CONJ
    return _rotate(q_inv, -p), q_inv


def _ee_at_base(root_pose, ee_pose) -> tuple[np.ndarray, np.ndarray]:
    """The end effector's pose in the root link's frame, as ``PDEEPosController.ee_pose_at_base``."""
    base_p, base_q = _invert(np.asarray(root_pose.p, _F32), np.asarray(root_pose.q, _F32))
    return _compose(base_p, base_q, np.asarray(ee_pose.p, _F32), np.asarray(ee_pose.q, _F32))


def target_pose_at_base(root_pose, ee_pose, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The position controller's target for the delta action ``delta`` (3,) float32: the end effector's pose in the
    root link's frame, translated by ``delta`` -> (p (3,), q (4,)), float32. ``root_pose``/``ee_pose``: sapien poses."""
    ee_p, ee_q = _ee_at_base(root_pose, ee_pose)
    return _compose(np.asarray(delta, _F32), _IDENTITY, ee_p, ee_q)


def target_pose_at_base_rotated(
    root_pose, ee_pose, delta: np.ndarray, delta_q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pose controller's target (``root_translation:root_aligned_body_rotation``): the end effector's pose in
    the root frame, translated by ``delta`` (3,) and turned by the quaternion ``delta_q`` (4,) in the root frame."""
    ee_p, ee_q = _ee_at_base(root_pose, ee_pose)
    q = quat_mul(np.asarray(delta_q, _F32), ee_q)
    if q[0] < 0:
        q = -q
    return ee_p + np.asarray(delta, _F32), q


def _fast_kind(ctrl, pos_cls, pose_cls) -> str | None:
    """Which target the fast path computes for ``ctrl`` ("pos" or "pose"); None for cases it does not reproduce
    exactly (see the module docstring)."""
    cfg = ctrl.config
    scene = ctrl.scene
    if (
        scene.gpu_sim_enabled
        or scene.num_envs != 1
        or not cfg.use_delta
        or cfg.use_target
        or len(ctrl.root_link._objs) != 1
        or len(ctrl.ee_link._objs) != 1
    ):
        return None
    if type(ctrl) is pos_cls and cfg.frame == "root_translation":
        return "pos"
    if type(ctrl) is pose_cls and cfg.frame == "root_translation:root_aligned_body_rotation":
        return "pose"
    return None


def applies(ctrl) -> bool:
    """Whether the fast path takes ``ctrl``'s ``set_action`` (False for other controllers and setups)."""
    from mani_skill.agents.controllers.pd_ee_pose import PDEEPosController, PDEEPoseController

    return isinstance(ctrl, PDEEPosController) and _fast_kind(ctrl, PDEEPosController, PDEEPoseController) is not None


def install() -> bool:
    """Route ManiSkill's end-effector controllers' ``set_action`` through the fast path where it applies; idempotent.
    Returns whether the fast path is active (False when turned off or when this ManiSkill's controller differs)."""
    if os.environ.get("MEPOLY_STOCK_EE_CONTROL", "") not in ("", "0"):
        return False
    import torch

    try:
        from mani_skill.agents.controllers.pd_ee_pose import PDEEPosController, PDEEPoseController
        from mani_skill.utils.geometry.rotation_conversions import euler_angles_to_matrix, matrix_to_quaternion
        from mani_skill.utils.structs import Pose
    except ImportError:  # a ManiSkill laid out differently keeps its own controller
        return False

    stock = PDEEPosController.set_action
    if getattr(stock, "_mepoly_fast", False):
        return True
    used = ("_preprocess_action", "qpos", "set_drive_targets")  # the class-level pieces the fast path calls
    if not all(hasattr(PDEEPosController, name) for name in used):
        return False

    def set_action(self, action):
        kind = _fast_kind(self, PDEEPosController, PDEEPoseController)
        if kind is None:
            return stock(self, action)
        action = self._preprocess_action(action)
        self._step = 0
        self._start_qpos = self.qpos
        root, ee = self.root_link._objs[0].entity_pose, self.ee_link._objs[0].entity_pose
        delta = action[0, :3].detach().cpu().numpy()
        if kind == "pos":
            p, q = target_pose_at_base(root, ee, delta)
        else:  # Euler angles -> quaternion through ManiSkill's own torch functions
            delta_q = matrix_to_quaternion(euler_angles_to_matrix(action[:, 3:6], "XYZ"))
            p, q = target_pose_at_base_rotated(root, ee, delta, delta_q[0].detach().cpu().numpy())
        self._target_pose = Pose.create_from_pq(torch.from_numpy(p)[None], torch.from_numpy(q)[None])
        self._target_qpos = self.kinematics.compute_ik(
            pose=self._target_pose,
            q0=self.articulation.get_qpos(),
            is_delta_pose=False,
            solver_config=self.config.delta_solver_config,
        )
        if self._target_qpos is None:
            self._target_qpos = self._start_qpos
        if self.config.interpolate:
            self._step_size = (self._target_qpos - self._start_qpos) / self._sim_steps
        else:
            self.set_drive_targets(self._target_qpos)

    set_action._mepoly_fast = True
    set_action._mepoly_stock = stock
    PDEEPosController.set_action = set_action
    return True


def uninstall() -> None:
    """Restore ManiSkill's own ``set_action`` (for comparisons)."""
    from mani_skill.agents.controllers.pd_ee_pose import PDEEPosController

    current = PDEEPosController.set_action
    if getattr(current, "_mepoly_fast", False):
        PDEEPosController.set_action = current._mepoly_stock
