"""A scripted expert for ``ReachAround-v1`` (:mod:`mepoly_il.envs.maniskill_reacharound`) that goes around the
pillar on a side chosen at random, so its demonstrations hold two modes whose average runs into the pillar.

Design:

* **Side.** Each demo picks left (+y) or right (-y) with probability 1/2 from a generator seeded by the demo's
  seed, so a demo is a function of its seed and a set of seeds gives about as many of each.
* **Path.** Three waypoints at the goal's height: ``v1`` before the pillar's near face, ``v2`` beyond its far face
  (both ``side * offset`` from the pillar's centre line, ``offset`` 21 cm: the Panda hand is about 21 cm across in y
  and the pillar 6 cm, which leaves about 6 cm of clearance for an imitator's errors), then the goal. The first leg
  is almost sideways, so the hand has cleared the pillar's width before it comes level with it. Each waypoint
  gets a small uniform jitter (``jitter``, +-1 cm), so demos of one side are not all the same curve.
* **Controller.** Closed loop in ``pd_ee_delta_pos`` (the IL control mode, so the recorded actions replay as they
  are): every step the action is ``gain * (waypoint - tcp)`` clipped to [-1, 1] per axis (at most 10 cm of target
  per step), gripper held open; the next waypoint takes over once the TCP is within ``switch_dist`` of the current
  one in the table plane. The episode stops at the first success (the TCP within 2.5 cm of the goal, pillar never
  touched); a demo that touches the pillar fails and is dropped by ``data generate``, as failed plans are.

:func:`solve_reacharound` has the calling convention of ManiSkill's motion-planning solutions, so it plugs into
``data generate`` through the task registry.
"""

from __future__ import annotations

import numpy as np

from mepoly_il.data.maniskill.sim import check_expert_env
from mepoly_il.errors import UserError
from mepoly_il.tasks import get_task

CONTROL_MODE = "pd_ee_delta_pos"


def _positions(env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tcp, goal, pillar) positions (3,) each, read from the simulator (the recorded env has obs_mode none)."""
    u = env.unwrapped
    get = lambda pose: np.asarray(pose.p.cpu().numpy(), dtype=np.float64).reshape(-1, 3)[0]  # noqa: E731
    return get(u.agent.tcp.pose), get(u.goal_site.pose), get(u.pillar.pose)


def solve_reacharound(
    env,
    seed: int | None = None,
    debug: bool = False,
    vis: bool = False,
    side: str | None = None,
    offset: float = 0.21,
    lead_in: float = 0.08,
    lead_out: float = 0.06,
    jitter: float = 0.01,
    gain: float = 10.0,
    switch_dist: float = 0.03,
    max_steps: int | None = None,
):
    """Reset ``env`` (a ``ReachAround-v1`` env in ``pd_ee_delta_pos``, one sub-env) with ``seed`` and go around the
    pillar; returns the last ``env.step`` result (its info holds ``success`` and ``elapsed_steps``).

    ``side``: ``"left"`` or ``"right"`` to force it (tests); by default drawn from the seed. ``offset``: distance (m)
    of the side waypoints from the pillar's centre line; ``lead_in`` / ``lead_out``: how far (m) before / after the
    pillar's centre they lie in x; ``jitter``: uniform noise (m, +-) added to every side waypoint in the table plane.
    ``max_steps``: give up after this many steps (default: the task's episode limit). ``debug``/``vis`` are ignored.
    """
    del debug, vis
    from mepoly_il.envs.maniskill_reacharound import ENV_ID

    check_expert_env(env, "solve_reacharound", ENV_ID, CONTROL_MODE)
    if side not in (None, "left", "right"):
        raise UserError(f"solve_reacharound: side={side!r}; use 'left', 'right' or None (random per seed)")
    rng = np.random.default_rng([seed if seed is not None else 0, 0x5241])
    sign = (1.0 if rng.random() < 0.5 else -1.0) if side is None else (1.0 if side == "left" else -1.0)
    noise = rng.uniform(-jitter, jitter, size=(3, 2))  # drawn whatever the side, so a forced side keeps the jitter
    env.reset(seed=seed)
    _, goal, pillar = _positions(env)
    waypoints = [
        np.array([pillar[0] - lead_in, pillar[1] + sign * offset, goal[2]]),
        np.array([pillar[0] + lead_out, pillar[1] + sign * offset, goal[2]]),
        goal.copy(),
    ]
    for w, n in zip(waypoints, noise):
        w[:2] += n
    waypoints[-1][:2] = goal[:2]  # the goal itself is not jittered; its noise only keeps the draws aligned
    limit = int(max_steps or get_task(ENV_ID).max_episode_steps)
    k, res = 0, None
    for _ in range(limit):
        tcp = _positions(env)[0]
        if k < len(waypoints) - 1 and np.linalg.norm(waypoints[k][:2] - tcp[:2]) < switch_dist:
            k += 1
        arm = np.clip(gain * (waypoints[k] - tcp), -1.0, 1.0)
        res = env.step(np.concatenate([arm, [1.0]]).astype(np.float32))
        info = res[-1]
        if bool(np.asarray(info["success"]).reshape(-1)[0]) or bool(np.asarray(info["touched"]).reshape(-1)[0]):
            break
    return res


def demo_side(seed: int) -> str:
    """The side :func:`solve_reacharound` takes for ``seed`` when none is forced (``"left"`` or ``"right"``)."""
    return "left" if np.random.default_rng([int(seed), 0x5241]).random() < 0.5 else "right"
