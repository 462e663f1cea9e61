"""Smooth World: the continuous 25x25 navigation map of the MePoly paper (§5.1), with the map, dynamics and
layouts of the authors' public code (github.com/UMich-CURLY/MePoly, smoothworld/envs/smoothworld.py).

State: position ``p`` in ``[0, 25)^2`` (x = column, y = row, cell ``[x, x+1) x [y, y+1)``); observation ``(p -
12.5) / 12.5`` in ``[-1, 1)^2``. Action: velocity in ``[-1, 1]^2``. One step:

1. ``p' = p + clip(a, -1, 1) * max_speed * dt`` (``dt = 0.25``, ``max_speed = 1``: at most a quarter cell per
axis);
2. clip ``p'`` per axis to ``[0, 25 - 1e-6]`` (the agent slides along the outer border);
3. if ``floor(p')`` is a wall cell the whole move is cancelled (no sliding along walls);
4. reward = the map value at ``floor(p')``: +20 in goal cells, -10 in death cells (both terminal), 0
elsewhere;
   the episode is truncated (not terminated) after ``max_steps`` (256).

Training starts are uniform over free cells (not wall / goal / death) plus a uniform offset inside the cell;
every layout also has one fixed evaluation start. :func:`classify` gives the route class of a successful
trajectory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

GRID = 25
CENTRE = 12.5
DT = 0.25
MAX_SPEED = 1.0
GOAL_REWARD = 20.0
DEATH_REWARD = -10.0
MAX_STEPS = 256

# Outcome codes of one episode.
SUCCESS, DEATH, TIMEOUT = 0, 1, 2
OUTCOMES = ("success", "death", "timeout")


@dataclass
class Layout:
    """Cell sets of one map, all indexed ``[y, x]``."""

    name: str
    wall: np.ndarray
    goal: np.ndarray
    death: np.ndarray
    eval_start: tuple[float, float]
    classes: tuple[str, ...]
    goal_ids: np.ndarray = field(default=None)  # (25, 25) int, -1 outside goals; used when classes are goals

    @property
    def reward_map(self) -> np.ndarray:
        m = np.zeros((GRID, GRID), dtype=np.float32)
        m[self.goal] = GOAL_REWARD
        m[self.death] = DEATH_REWARD
        return m

    @property
    def free(self) -> np.ndarray:
        return ~(self.wall | self.goal | self.death)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.zeros((GRID, GRID), dtype=bool)
    return z.copy(), z.copy(), z.copy()


def _block(mask: np.ndarray, xs: range, ys: range, ids: np.ndarray | None = None, k: int = 0) -> None:
    for y in ys:
        for x in xs:
            mask[y, x] = True
            if ids is not None:
                ids[y, x] = k


def make_layout(name: str) -> Layout:
    """Build one of :data:`LAYOUTS` (cell coordinates from the authors' config classes)."""
    wall, goal, death = _empty()
    ids = -np.ones((GRID, GRID), dtype=np.int64)
    if name == "two_walls":
        for k, rows in enumerate(((23, 24), (0, 1))):  # class 0 = top (large y), 1 = bottom
            _block(goal, range(GRID), rows, ids, k)
        return Layout(name, wall, goal, death, (12.5, 12.5), ("top", "bottom"), ids)
    if name == "four_walls":
        blocks = {
            "top": (range(11, 14), range(22, 25)),
            "bottom": (range(11, 14), range(0, 3)),
            "left": (range(0, 3), range(11, 14)),
            "right": (range(22, 25), range(11, 14)),
        }
        for k, (xs, ys) in enumerate(blocks.values()):
            _block(goal, xs, ys, ids, k)
        return Layout(name, wall, goal, death, (12.5, 12.5), tuple(blocks), ids)
    if name == "tree_in_the_middle":
        _block(death, range(13, 18), range(10, 15))
        _block(goal, range(23, 25), range(10, 15), ids, 0)
        return Layout(name, wall, goal, death, (2.5, 12.5), ("above", "below"), ids)
    if name == "two_slits":
        for ys in (range(0, 4), range(8, 17), range(21, 25)):
            _block(wall, range(15, 16), ys)
        _block(goal, range(24, 25), range(GRID), ids, 0)
        return Layout(name, wall, goal, death, (2.5, 12.5), ("upper_slit", "lower_slit"), ids)
    if name == "cshape":
        _block(wall, range(7, 18), range(7, 8))
        _block(wall, range(7, 18), range(17, 18))
        _block(wall, range(17, 18), range(7, 18))
        _block(goal, range(10, 15), range(10, 15), ids, 0)
        return Layout(name, wall, goal, death, (19.5, 12.5), ("over", "under"), ids)
    if name == "three_goals":
        _block(death, range(11, 14), range(11, 14))
        for k, (cx, cy) in enumerate(((12, 18), (7, 7), (17, 7))):
            _block(goal, range(cx - 1, cx + 2), range(cy - 1, cy + 2), ids, k)
        # The authors' eval start (12.5, 12.5) is inside the death block; kept for fidelity.
        return Layout(name, wall, goal, death, (12.5, 12.5), ("top", "bottom_left", "bottom_right"), ids)
    raise ValueError(f"unknown Smooth World layout {name!r}; choose one of {LAYOUTS}")


LAYOUTS = ("two_walls", "four_walls", "tree_in_the_middle", "two_slits", "cshape", "three_goals")
BENCHMARK_LAYOUTS = ("two_walls", "four_walls", "tree_in_the_middle", "two_slits", "cshape")

# Minimum steps from the eval start per class: a BFS over the 8 max-speed moves (a quarter cell per axis per step),
# run per route with the other routes blocked; :func:`bfs_min_steps` recomputes them.
SHORTEST_STEPS = {
    "two_walls": {"top": 42, "bottom": 43},
    "four_walls": {"top": 38, "right": 38, "left": 39, "bottom": 39},
    "tree_in_the_middle": {"above": 82, "below": 82},
    "two_slits": {"upper_slit": 86, "lower_slit": 86},
    "cshape": {"over": 82, "under": 83},
}


def step_positions(layout: Layout, pos: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact dynamics for a batch: pos (N, 2), actions (N, 2) -> (new pos (N, 2), reward (N,))."""
    new = pos + np.clip(actions, -1.0, 1.0) * MAX_SPEED * DT
    new = np.clip(new, 0.0, GRID - 1e-6)
    cell = np.floor(new).astype(np.int64)
    blocked = layout.wall[cell[:, 1], cell[:, 0]]
    new = np.where(blocked[:, None], pos, new)
    cell = np.floor(new).astype(np.int64)
    reward = layout.reward_map[cell[:, 1], cell[:, 0]]
    return new, reward


def sample_starts(layout: Layout, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform training starts: a uniform free cell plus a uniform offset inside it -> (n, 2)."""
    ys, xs = np.nonzero(layout.free)
    k = rng.integers(0, len(xs), size=n)
    return np.stack([xs[k], ys[k]], axis=1).astype(np.float64) + rng.uniform(0.0, 1.0, size=(n, 2))


def to_obs(pos: np.ndarray) -> np.ndarray:
    return ((pos - CENTRE) / CENTRE).astype(np.float32)


class VecSmoothWorld:
    """``num_envs`` agents stepped together with same-step autoreset.

    ``step`` returns ``(obs, reward, terminated, truncated, info)``; for envs that ended this step ``obs`` is
    already the next episode's first observation and ``info["final_obs"]`` holds the last one (needed to
    bootstrap truncated episodes). ``info["episode_done"]`` / ``episode_return`` / ``episode_outcome``
    describe the finished episodes.
    """

    obs_dim = 2
    act_dim = 2

    def __init__(self, layout: str | Layout, num_envs: int, max_steps: int = MAX_STEPS, seed: int = 0):
        self.layout = make_layout(layout) if isinstance(layout, str) else layout
        self.num_envs = int(num_envs)
        self.max_steps = int(max_steps)
        self.rng = np.random.default_rng(seed)
        self.pos = np.zeros((self.num_envs, 2))
        self.t = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.pos = sample_starts(self.layout, self.num_envs, self.rng)
        self.t[:] = 0
        return to_obs(self.pos)

    def step(self, actions: np.ndarray):
        self.pos, reward = step_positions(self.layout, self.pos, np.asarray(actions, dtype=np.float64))
        self.t += 1
        term = reward != 0.0
        trunc = (self.t >= self.max_steps) & ~term
        done = term | trunc
        final_obs = to_obs(self.pos)
        outcome = np.where(reward > 0, SUCCESS, np.where(reward < 0, DEATH, TIMEOUT))
        info = {
            "final_obs": final_obs,
            "episode_done": done,
            "episode_return": reward.astype(np.float32),
            "episode_outcome": outcome,
            "episode_length": self.t.copy(),
        }
        if done.any():
            self.pos[done] = sample_starts(self.layout, int(done.sum()), self.rng)
            self.t[done] = 0
        return to_obs(self.pos), reward.astype(np.float32), term, trunc, info


def rollout_episodes(layout: Layout, act_fn, starts: np.ndarray, max_steps: int = MAX_STEPS) -> dict:
    """Run one episode from each start (no autoreset) with ``act_fn(obs (N, 2)) -> actions (N, 2)``.

    Returns ``traj`` (N, max_steps + 1, 2) positions, NaN after the end; ``outcome`` (N,) codes; ``length``
    (N,) steps taken; ``cls`` (N,) route class index for successes, -1 otherwise.
    """
    n = len(starts)
    pos = np.asarray(starts, dtype=np.float64).copy()
    traj = np.full((n, max_steps + 1, 2), np.nan)
    traj[:, 0] = pos
    alive = np.ones(n, dtype=bool)
    outcome = np.full(n, TIMEOUT)
    length = np.full(n, max_steps)
    for t in range(max_steps):
        idx = np.nonzero(alive)[0]
        if len(idx) == 0:
            break
        acts = np.asarray(act_fn(to_obs(pos[idx])), dtype=np.float64)
        new, r = step_positions(layout, pos[idx], acts)
        pos[idx] = new
        traj[idx, t + 1] = new
        ended = r != 0
        outcome[idx[ended]] = np.where(r[ended] > 0, SUCCESS, DEATH)
        length[idx[ended]] = t + 1
        alive[idx[ended]] = False
    cls = np.array([classify(layout, traj[i]) if outcome[i] == SUCCESS else -1 for i in range(n)], dtype=np.int64)
    return {"traj": traj.astype(np.float32), "outcome": outcome, "length": length, "cls": cls}


def classify(layout: Layout, traj: np.ndarray) -> int:
    """Route class of one successful trajectory (T, 2) (NaN-padded) as an index into ``layout.classes``.

    two_walls / four_walls / three_goals: the goal reached. tree_in_the_middle: above (y >= 12.5) or below
    when first inside x in [13, 18). two_slits: the opening used at the first crossing of x = 15. cshape:
    whichever of y >= 18 (over) or y < 7 (under) the path reaches first.
    """
    traj = traj[~np.isnan(traj[:, 0])]
    name = layout.name
    if name in ("two_walls", "four_walls", "three_goals"):
        x, y = np.floor(traj[-1]).astype(int)
        return int(layout.goal_ids[y, x])
    if name == "tree_in_the_middle":
        inside = np.nonzero((traj[:, 0] >= 13) & (traj[:, 0] < 18))[0]
        y = traj[inside[0], 1] if len(inside) else traj[-1, 1]
        return 0 if y >= CENTRE else 1
    if name == "two_slits":
        crossed = np.nonzero(traj[:, 0] >= 15)[0]
        y = traj[crossed[0], 1] if len(crossed) else traj[-1, 1]
        return 0 if y >= CENTRE else 1
    if name == "cshape":
        hit = np.nonzero((traj[:, 1] >= 18) | (traj[:, 1] < 7))[0]
        if len(hit) == 0:
            return 0 if traj[-1, 1] >= CENTRE else 1
        return 0 if traj[hit[0], 1] >= 18 else 1
    raise ValueError(f"no classes for layout {name!r}")


def bfs_min_steps(layout: Layout, start: tuple[float, float] | None = None) -> dict[str, int]:
    """Fewest max-speed steps (8 directions, lattice 0.25) from ``start`` to each class's goal, walls/death
    respected.

    Each reached goal point is classified (:func:`classify`) on its BFS path. Exact per class when classes are
    goals (two_walls, four_walls, three_goals). For route classes (tree, slits, cshape) each lattice point
    keeps only its first path, so a class can be missing or too long; :data:`SHORTEST_STEPS` holds the
    per-route minima, which this function reproduces for two_slits and cshape.
    """
    start = np.asarray(layout.eval_start if start is None else start, dtype=np.float64)
    moves = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)], dtype=np.float64)
    key = lambda p: (round(p[0] * 4), round(p[1] * 4))
    parent = {key(start): None}
    queue = deque([(start, 0)])
    best: dict[str, int] = {}
    while queue:
        p, d = queue.popleft()
        new, r = step_positions(layout, np.repeat(p[None], len(moves), 0), moves)
        for q, rq in zip(new, r):
            k = key(q)
            if k in parent or rq < 0:
                continue
            parent[k] = key(p)
            if rq > 0:
                path = [q]
                kk = key(p)
                while kk is not None:
                    path.append(np.array(kk) / 4.0)
                    kk = parent[kk]
                c = layout.classes[classify(layout, np.array(path[::-1]))]
                best.setdefault(c, d + 1)
                continue
            queue.append((q, d + 1))
    return best


class SmoothWorldEnv(gym.Env):
    """Single-agent gymnasium view of Smooth World (uniform starts unless ``options={"start": (x, y)}``)."""

    metadata = {"render_modes": []}

    def __init__(self, layout: str = "two_walls", max_steps: int = MAX_STEPS):
        self.layout = make_layout(layout)
        self.max_steps = int(max_steps)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.pos = np.zeros(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "start" in options:
            self.pos = np.asarray(options["start"], dtype=np.float64)
        else:
            self.pos = sample_starts(self.layout, 1, self.np_random)[0]
        self.t = 0
        return to_obs(self.pos), {}

    def step(self, action):
        new, r = step_positions(self.layout, self.pos[None], np.asarray(action, dtype=np.float64).reshape(1, 2))
        self.pos = new[0]
        self.t += 1
        r = float(r[0])
        terminated = r != 0.0
        truncated = (not terminated) and self.t >= self.max_steps
        return to_obs(self.pos), r, terminated, truncated, {"pos": self.pos.copy()}
