"""The fast CPU path of ManiSkill's end-effector position controller gives ManiSkill's own numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mepoly_il.envs import maniskill_fast_ee as fast_ee
from mepoly_il.envs.maniskill import import_maniskill

pytestmark = pytest.mark.sim


@pytest.fixture
def gym():
    gym = import_maniskill()  # installs the fast path
    yield gym
    fast_ee.install()  # whatever a test switched off, later tests get the package's default


def _rollout(gym, env_id: str, control_mode: str, fast: bool, steps: int = 40, seed: int = 3):
    """Observations and arm joint targets of ``steps`` random actions from one seed, with or without the fast path."""
    if fast:
        assert fast_ee.install()
    else:
        fast_ee.uninstall()
    env = gym.make(env_id, obs_mode="state", control_mode=control_mode, sim_backend="physx_cpu", reward_mode="sparse")
    try:
        obs, _ = env.reset(seed=seed)
        arm = env.unwrapped.agent.controller.controllers["arm"]
        rng = np.random.default_rng(0)
        states, targets = [obs.numpy().copy()], []
        for _ in range(steps):
            action = np.clip(rng.normal(0.0, 0.6, env.action_space.shape), -1, 1).astype(np.float32)
            obs, *_ = env.step(action)
            states.append(obs.numpy().copy())
            targets.append(arm._target_qpos.numpy().copy())
        return np.stack(states), np.stack(targets)
    finally:
        env.close()


@pytest.mark.parametrize(
    "env_id, control_mode",
    [("PushCube-v1", "pd_ee_delta_pos"), ("StackCube-v1", "pd_ee_delta_pos"), ("PushT-v1", "pd_ee_delta_pose")],
)
def test_fast_path_reproduces_maniskill_trajectories_exactly(gym, env_id, control_mode):
    stock_states, stock_targets = _rollout(gym, env_id, control_mode, fast=False)
    fast_states, fast_targets = _rollout(gym, env_id, control_mode, fast=True)
    assert np.abs(np.diff(stock_states, axis=0)).max() > 1e-3  # the arm moved
    np.testing.assert_array_equal(fast_targets, stock_targets)
    np.testing.assert_array_equal(fast_states, stock_states)


def test_target_pose_matches_maniskill_pose_arithmetic(gym):
    """Random root/EE poses and deltas: the numpy target equals ManiSkill's ``Pose`` arithmetic exactly."""
    import sapien
    from mani_skill.utils.geometry.rotation_conversions import quaternion_multiply
    from mani_skill.utils.structs import Pose

    rng = np.random.default_rng(1)
    for _ in range(200):
        qs = rng.normal(size=(2, 4)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        root = sapien.Pose(rng.normal(size=3).astype(np.float32), qs[0])
        ee = sapien.Pose(rng.normal(size=3).astype(np.float32), qs[1])
        delta = rng.uniform(-0.1, 0.1, size=3).astype(np.float32)
        prev = Pose.create([root]).inv() * Pose.create([ee])
        expected = Pose.create(torch.from_numpy(delta)[None]) * prev
        p, q = fast_ee.target_pose_at_base(root, ee, delta)
        np.testing.assert_array_equal(p, expected.p[0].numpy())
        np.testing.assert_array_equal(q, expected.q[0].numpy())
        # the pose controller: translate in the root frame, turn by a delta rotation in the root frame
        turn = torch.from_numpy(qs[1] * np.float32(np.sign(qs[1][0])))[None]
        p, q = fast_ee.target_pose_at_base_rotated(root, ee, delta, turn[0].numpy())
        np.testing.assert_array_equal(p, (prev.p + torch.from_numpy(delta)[None])[0].numpy())
        np.testing.assert_array_equal(q, quaternion_multiply(turn, prev.q)[0].numpy())


def test_other_controllers_keep_maniskill_method(gym, monkeypatch):
    """A virtual-target controller is not a case the fast path reproduces: it must get ManiSkill's method."""
    from mani_skill.agents.controllers.pd_ee_pose import PDEEPosController

    fast_ee.uninstall()
    maniskill_method = PDEEPosController.set_action
    calls = []

    def spy(self, action):
        calls.append(type(self).__name__)
        return maniskill_method(self, action)

    monkeypatch.setattr(PDEEPosController, "set_action", spy)
    assert fast_ee.install()  # the fast path now falls back to the spy
    _rollout(gym, "PushCube-v1", "pd_ee_target_delta_pos", fast=True, steps=3)
    assert calls == ["PDEEPosController"] * 3
    calls.clear()
    _rollout(gym, "PushCube-v1", "pd_ee_delta_pos", fast=True, steps=3)
    _rollout(gym, "PushCube-v1", "pd_ee_delta_pose", fast=True, steps=3)
    assert calls == []


def test_switched_off_by_environment_variable(gym, monkeypatch):
    from mani_skill.agents.controllers.pd_ee_pose import PDEEPosController

    fast_ee.uninstall()
    monkeypatch.setenv("MEPOLY_STOCK_EE_CONTROL", "1")
    assert not fast_ee.install()
    assert not getattr(PDEEPosController.set_action, "_mepoly_fast", False)
