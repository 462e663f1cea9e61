"""A scripted closed-loop expert for ManiSkill's PushT-v1 (demos without a download).

ManiSkill ships no motion planner for PushT, so this module plans pushes from the simulator's state. The expert acts
in ``pd_ee_delta_pose`` (the control mode the IL configs use for PushT), so its recorded actions replay as they are.

The idea, from quasi-static planar pushing:

* **Motion model.** A block sliding on a table under a slow push moves so that its twist is proportional to the
  applied wrench through the *limit surface*; with the usual ellipsoidal approximation a force ``f`` (unit, along
  ``u``) whose line of action passes at signed offset ``h`` from the centre of friction (``h = c x u``) translates the
  centroid along ``u`` and turns the block at ``omega = h / rho**2`` per unit translation, where ``rho`` is the mean
  distance of the T's area from its centroid (uniform support pressure). With sticking contact (the T's friction is
  high) the pusher advances ``1 + h**2 / rho**2`` per unit of centroid translation. So pushing through the centroid
  translates, pushing off-centre translates and turns, and the sign of ``h`` picks the turning direction.
* **Choosing a push.** Every control step the expert enumerates lines of action (push direction ``u`` x offset
  ``h``, fixed in the T's frame), casts each line onto the T's boundary to get the contact point, and keeps those
  whose contact face admits the push inside a conservative friction cone and whose contact is away from a corner.
  For each it predicts, with the model above, the pose after pushing ``L`` metres and scores the reduction of the
  pose error (centroid distance + ``rho`` x heading error, the mean displacement of the T's area) per control step
  spent, counting the steps to reach the pre-contact point (more when the stick must be lifted over the T).
* **Closed loop.** The plan is recomputed from the simulator's state at every step. The push in progress is kept
  while it stays about as good as the best alternative (it costs no approach steps), so the stick only leaves the
  block when another contact is clearly better.
* **Reaching a contact without disturbing the block.** The stick goes straight to the pre-contact point (behind the
  contact, on the line of action) when that path keeps clear of the T's footprint; otherwise it rises above the T
  (its top is at 4 cm, the stick is a 0.8 cm-radius cylinder), crosses, and comes down behind the contact. It comes
  down slowly (a fast descent in ``pd_ee_delta_pose`` swings the tip sideways by up to 2 cm, onto the T's edge), and
  once above the pre-contact point it only comes down: with separate thresholds for "rise" and "descend" the stick
  could bob up and down forever. A tip resting on the T's top edge is not a contact.
* **Keeping out of trouble.** A push that makes no progress for a few steps (the stick jammed in the T's inner
  corner, or was blocked on its way), or whose contact is not reached within the time a crossing of the workspace
  takes, is dropped and not chosen again for a while; the stick is turned back to vertical every step, because
  contacts tilt it and a tilted hand catches the T.
* **Reproducible.** Every attempt starts from a freshly built scene (``reset`` with ``reconfigure``), as evaluation
  with ``reconfiguration_freq=1`` and the dataset conversion's replay do: a reused PhysX scene keeps contact caches
  across resets, so the same seed and actions would otherwise depend on the attempts made before in that env.
* **Diversity.** Where several pushes score about the same (which face, which side of the T, turning one way or
  the other when the heading error is near 180 degrees), the expert picks one at random with a per-demo seeded
  generator, so demos from different seeds show different strategies; :func:`strategy_summary` describes them from
  the expert's record, :func:`pusht_mode` labels any episode from its state observations (the half of the T that the
  stick touched first).

:func:`solve_pusht` has the calling convention of ManiSkill's motion-planning solutions (``solve(env, seed=...,
debug=..., vis=...)`` returning the last ``env.step`` result), so a demo worker can call it in their place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from mepoly_il.data.maniskill.sim import check_expert_env
from mepoly_il.envs.maniskill_fast_ee import quat_mul
from mepoly_il.errors import UserError

ENV_ID = "PushT-v1"
CONTROL_MODE = "pd_ee_delta_pose"
#: The step limit the IL configs evaluate PushT with (ManiSkill's IL baselines use the same).
MAX_STEPS = 150

# ---- T geometry in the actor frame (ManiSkill's push_t.py builds the T from two boxes, crossbar at negative y) ----
#: Counter-clockwise outline of the T, (8, 2) metres.
TEE_OUTLINE = np.array(
    [
        [-0.1, -0.0625],
        [0.1, -0.0625],
        [0.1, -0.0125],
        [0.025, -0.0125],
        [0.025, 0.1375],
        [-0.025, 0.1375],
        [-0.025, -0.0125],
        [-0.1, -0.0125],
    ]
)
#: Name of edge i (from vertex i to i+1); "+x"/"-x" is the side of the T in its own frame.
FACE_NAMES = (
    "bar_back",
    "bar_end+x",
    "bar_under+x",
    "stem_side+x",
    "stem_end",
    "stem_side-x",
    "bar_under-x",
    "bar_end-x",
)
_BAR = ((-0.1, 0.1), (-0.0625, -0.0125))
_STEM = ((-0.025, 0.025), (-0.0125, 0.1375))
STICK_RADIUS = 0.008  # the panda_stick's collision cylinder
#: The stick tip moves about this fraction of a commanded ``pd_ee_delta_pose`` step (0.1 m per unit action) in one
#: control step, for small and large steps alike (measured on the CPU simulator), so actions are scaled by 1/0.39.
_TRACKING = 0.39
_Z_CLEAR = 0.055  # tip height above which the stick clears the T (top at 0.041) with margin
_Z_PUSH = 0.03  # tip height below which the stick touches the T's side (higher, it may rest on the T's top edge)


def _area_stats() -> tuple[np.ndarray, float]:
    """Centroid (2,) of the T's area and ``rho``, the mean distance of the area from it."""
    pts = []
    for (x0, x1), (y0, y1) in (_BAR, _STEM):
        xs = np.arange(x0 + 0.00025, x1, 0.0005)
        ys = np.arange(y0 + 0.00025, y1, 0.0005)
        pts.append(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    pts = np.concatenate(pts)
    centroid = pts.mean(0)
    return centroid, float(np.linalg.norm(pts - centroid, axis=1).mean())


CENTROID, RHO = _area_stats()


@dataclass(frozen=True)
class ExpertOptions:
    """Tuning of :func:`solve_pusht` (all lengths in metres, speeds in metres per control step)."""

    max_steps: int = MAX_STEPS  #: give up after this many control steps
    tie_tol: float = 0.15  #: pushes scoring within this fraction of the best are equally good: pick one at random
    switch_tol: float = 0.6  #: leave the push in progress only for one scoring this fraction better
    n_dirs: int = 48  #: push directions tried (evenly spaced in the T's frame)
    n_offsets: int = 15  #: line-of-action offsets tried
    rho_model: float = RHO  #: limit-surface radius of the push model (default: the T's mean area radius, 0.067 m)
    friction_deg: float = 40.0  #: max angle between push and the face's inward normal (the T's friction is high)
    approach_overhead: float = 6.0  #: control steps added to every approach (settling) when scoring pushes
    approach_speed: float = 0.035  #: stick speed when moving between contacts
    push_speed: float = 0.02  #: stick speed when pushing far from the goal (slower near it)
    descend_speed: float = 0.012  #: stick speed when coming down to a contact
    z_low: float = 0.02  #: stick tip height when pushing (the T is 4 cm tall)
    z_high: float = 0.07  #: stick tip height when crossing over the T
    clearance: float = 0.012  #: gap between the stick and the T at the pre-contact point
    heading_weight: float = 1.0  #: weight of the heading error (x rho) against the centroid distance in the score

    def check(self) -> None:
        """Raise :class:`UserError` on a value the expert cannot work with."""
        if self.max_steps < 1:
            raise UserError(f"max_steps={self.max_steps}: must be >= 1; use the IL limit {MAX_STEPS}")
        for name in ("tie_tol", "switch_tol"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise UserError(f"{name}={v}: must be in [0, 1); e.g. {getattr(ExpertOptions, name)}")
        if self.n_dirs < 4 or self.n_offsets < 1:
            raise UserError(f"n_dirs={self.n_dirs}, n_offsets={self.n_offsets}: need n_dirs >= 4 and n_offsets >= 1")
        if self.approach_overhead < 0:
            raise UserError(f"approach_overhead={self.approach_overhead}: must be >= 0 control steps")
        if not 0.01 <= self.rho_model <= 0.5:
            raise UserError(f"rho_model={self.rho_model}: must be in [0.01, 0.5] m")
        if not 0.0 < self.friction_deg < 90.0:
            raise UserError(f"friction_deg={self.friction_deg}: must be in (0, 90)")
        for name in ("approach_speed", "push_speed", "descend_speed", "clearance"):
            v = getattr(self, name)
            if not 0.0 < v <= 0.1:
                raise UserError(f"{name}={v}: must be in (0, 0.1] m (the controller moves at most 0.1 m a step)")
        if not 0.0 < self.z_low < 0.04 or self.z_high < 0.06:
            raise UserError(
                f"z_low={self.z_low}, z_high={self.z_high}: the tip must push below the T's top (0 < z_low < 0.04) "
                "and cross above it (z_high >= 0.06)"
            )


def make_options(**overrides: Any) -> ExpertOptions:
    """:class:`ExpertOptions` with ``overrides`` applied and checked (unknown names raise :class:`UserError`)."""
    known = {f.name for f in fields(ExpertOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(
            f"PushT expert option(s) {', '.join(unknown)}: unknown; known options: {', '.join(sorted(known))}"
        )
    opts = replace(ExpertOptions(), **overrides)
    opts.check()
    return opts


# ------------------------------------------------------------------------------------------------------------------
# planar geometry
# ------------------------------------------------------------------------------------------------------------------
def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points ``p`` (..., 2) to segments ``a``-``b`` (S, 2): (..., S)."""
    ab = b - a
    t = np.clip(((p[..., None, :] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    return np.linalg.norm(p[..., None, :] - (a + t[..., None] * ab), axis=-1)


def _paths_clear(a: np.ndarray, b: np.ndarray, margin: float) -> np.ndarray:
    """Whether the body-frame segments from ``a`` (2,) to each of ``b`` (K, 2) keep ``margin`` away from the T's
    outline: (K,) bool.

    Both ends are outside the T (the tip never is inside it), so keeping clear of the outline keeps clear of the T.
    """
    v0, v1 = TEE_OUTLINE, np.roll(TEE_OUTLINE, -1, axis=0)  # (S, 2)
    d = (b - a)[:, None, :]  # (K, 1, 2)
    e = (v1 - v0)[None]  # (1, S, 2)
    w = (v0 - a)[None]
    den = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]  # (K, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[..., 0] * e[..., 1] - w[..., 1] * e[..., 0]) / den
        s = (w[..., 0] * d[..., 1] - w[..., 1] * d[..., 0]) / den
    crosses = ((np.abs(den) > 1e-12) & (t >= 0) & (t <= 1) & (s >= 0) & (s <= 1)).any(1)
    # non-crossing segments: the closest pair involves an end point of one of them
    ends = np.minimum(_seg_dist(a, v0, v1).min(), _seg_dist(b, v0, v1).min(1))  # segment ends to the outline
    dd = (d * d).sum(-1)  # (K, 1)
    tv = np.clip(((v0[None] - a) * d).sum(-1) / np.maximum(dd, 1e-18), 0.0, 1.0)  # (K, S)
    verts = np.linalg.norm(v0[None] - (a + tv[..., None] * d), axis=-1).min(1)  # outline vertices to the segments
    return ~crosses & (np.minimum(ends, verts) >= margin)


def _path_clear(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    """:func:`_paths_clear` for one segment ``a``-``b``."""
    return bool(_paths_clear(a, b[None], margin)[0])


def _inside(p: np.ndarray) -> bool:
    """Whether the T-frame point ``p`` (2,) lies inside the T."""
    return any(x0 <= p[0] <= x1 and y0 <= p[1] <= y1 for (x0, x1), (y0, y1) in (_BAR, _STEM))


def _cast(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of rays ``origins + t dirs`` (N, 2) on the T outline: (t (N,), face (N,), position along face (N,)).

    ``t`` is inf where a ray misses; the position is in metres from the face's first vertex.
    """
    a, b = TEE_OUTLINE, np.roll(TEE_OUTLINE, -1, axis=0)
    e = b - a  # (S, 2)
    # solve origins + t d = a + s e  for t (along ray) and s in [0, 1] (along edge)
    d = dirs[:, None, :]
    w = a[None] - origins[:, None, :]
    den = d[..., 0] * e[None, :, 1] - d[..., 1] * e[None, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[..., 0] * e[None, :, 1] - w[..., 1] * e[None, :, 0]) / den
        s = (w[..., 0] * d[..., 1] - w[..., 1] * d[..., 0]) / den
    ok = (np.abs(den) > 1e-12) & (s >= 0) & (s <= 1) & (t > 0)
    t = np.where(ok, t, np.inf)
    face = t.argmin(1)
    t = np.where(np.isfinite(t[np.arange(len(t)), face]), t[np.arange(len(t)), face], np.inf)
    rows = np.arange(len(origins))
    along = s[rows, face] * np.linalg.norm(e[face], axis=1)
    return t, face, along


_FACE_LEN = np.linalg.norm(np.roll(TEE_OUTLINE, -1, axis=0) - TEE_OUTLINE, axis=1)
_FACE_INWARD = (
    np.stack(
        [
            -(np.roll(TEE_OUTLINE, -1, axis=0) - TEE_OUTLINE)[:, 1],
            (np.roll(TEE_OUTLINE, -1, axis=0) - TEE_OUTLINE)[:, 0],
        ],
        axis=1,
    )
    / _FACE_LEN[:, None]
)  # CCW outline: the left normal points inside


@dataclass
class _Push:
    """One line of action fixed in the T's frame."""

    u: np.ndarray  # (2,) unit push direction
    h: float  # signed offset of the line from the centroid (c x u)
    contact: np.ndarray  # (2,) contact point on the outline
    face: int


class _Planner:
    """Candidate pushes in the T's frame (fixed geometry, computed once) and their scoring."""

    def __init__(self, opts: ExpertOptions) -> None:
        self.opts = opts
        phis = np.arange(opts.n_dirs) * (2 * np.pi / opts.n_dirs)
        hmax = 0.12
        hs = np.linspace(-hmax, hmax, opts.n_offsets) if opts.n_offsets > 1 else np.zeros(1)
        phi, h = np.meshgrid(phis, hs, indexing="ij")
        phi, h = phi.ravel(), h.ravel()
        u = np.stack([np.cos(phi), np.sin(phi)], 1)
        perp = np.stack([-u[:, 1], u[:, 0]], 1)
        # c x u = h  <=>  c = centroid - h perp(u) + t u
        origins = CENTROID - h[:, None] * perp - 0.5 * u
        t, face, along = _cast(origins, u)
        hit = np.isfinite(t)
        cos_lim = math.cos(math.radians(opts.friction_deg))
        corner = 2 * STICK_RADIUS  # near a concave corner the stick jams against the other face
        ok = (
            hit & ((_FACE_INWARD[face] * u).sum(1) >= cos_lim) & (along >= corner) & (along <= _FACE_LEN[face] - corner)
        )
        contact = origins + np.where(hit, t, 0.0)[:, None] * u
        # the pre-contact point must be clear of the whole T (the outline is not convex)
        pre = contact - (STICK_RADIUS + opts.clearance) * u
        v0, v1 = TEE_OUTLINE, np.roll(TEE_OUTLINE, -1, axis=0)
        clear = _seg_dist(np.where(ok[:, None], pre, 0.0), v0, v1).min(1) >= STICK_RADIUS + 0.5 * opts.clearance
        ok &= clear
        self.u, self.h, self.contact, self.face, self.pre = u[ok], h[ok], contact[ok], face[ok], pre[ok]


# ------------------------------------------------------------------------------------------------------------------
# the expert
# ------------------------------------------------------------------------------------------------------------------
def _rotvec_to(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) of ``q_to * q_from^-1``: the world-frame turn taking ``q_from`` to ``q_to``."""
    inv = q_from * np.array([1.0, -1.0, -1.0, -1.0])
    d = quat_mul(q_to, inv)
    if d[0] < 0:
        d = -d
    n = np.linalg.norm(d[1:])
    return np.zeros(3) if n < 1e-9 else d[1:] / n * 2.0 * math.atan2(n, d[0])


def _yaw(q) -> float:
    """Heading of a z-rotation quaternion (w, x, y, z)."""
    return 2.0 * math.atan2(float(q[3]), float(q[0]))


def _state(env) -> dict[str, Any]:
    u = env.unwrapped
    tee_p, tee_q = u.tee.pose.p[0].cpu().numpy(), u.tee.pose.q[0].cpu().numpy()
    goal_p, goal_q = u.goal_tee.pose.p[0].cpu().numpy(), u.goal_tee.pose.q[0].cpu().numpy()
    return {
        "tee": (tee_p[:2].astype(np.float64), _yaw(tee_q)),
        "goal": (goal_p[:2].astype(np.float64), _yaw(goal_q)),
        "tip": u.agent.tcp.pose.p[0].cpu().numpy().astype(np.float64),
        "tip_q": u.agent.tcp.pose.q[0].cpu().numpy().astype(np.float64),
    }


def pose_error(env) -> tuple[float, float]:
    """(centroid distance in metres, absolute heading error in radians) of the T to its goal."""
    s = _state(env)
    (tp, tth), (gp, gth) = s["tee"], s["goal"]
    dist = np.linalg.norm(tp + _rot(tth) @ CENTROID - gp - _rot(gth) @ CENTROID)
    return float(dist), float(abs(_wrap(tth - gth)))


_STALL_STEPS = 6  # a push that makes no progress for this many steps is dropped
_APPROACH_STEPS = 30  # so is a push whose contact was not reached in this many steps


class _Expert:
    def __init__(self, opts: ExpertOptions, rng: np.random.Generator) -> None:
        self.opts, self.rng = opts, rng
        self.planner = _Planner(opts)
        self.current: int | None = None  # index of the push in progress among the planner's candidates
        self.pushes: list[dict[str, Any]] = []
        self.lifts = 0
        self._lifted = False
        self.tip_q0: np.ndarray | None = None
        self.ban_until = np.full(len(self.planner.u), -1)  # step until which a push is not chosen (it stalled)
        #: (pose error, tip position, engaged) per step since the push in progress began
        self.history: list[tuple[float, np.ndarray, bool]] = []

    def act(self, state: dict[str, Any], step: int) -> np.ndarray:
        o = self.opts
        (tp, tth), (gp, gth) = state["tee"], state["goal"]
        tip = state["tip"]
        R = _rot(tth)
        c_w = tp + R @ CENTROID
        g_c = gp + _rot(gth) @ CENTROID
        dth = float(_wrap(gth - tth))
        err = np.linalg.norm(g_c - c_w) + RHO * abs(dth)
        # the tip in the T's frame (the planner works there)
        tip_b = R.T @ (tip[:2] - tp)

        pl = self.planner
        u, h, contact, pre = pl.u, pl.h, pl.contact, pl.pre
        # predicted motion for pusher advance L along u (force along the line of action, ellipsoidal limit surface)
        push_v = float(np.clip(err * 0.25, 0.004, o.push_speed))
        Ls = np.linspace(1.0, 12.0, 12)[None, :] * push_v  # up to 12 steps of pushing
        r2 = o.rho_model**2
        alpha = Ls / (1.0 + h**2 / r2)[:, None]
        dth_pred = alpha * (h / r2)[:, None]
        dx_b = alpha[..., None] * u[:, None, :]  # centroid shift in the T frame
        mid = tth + 0.5 * dth_pred
        cm, sm = np.cos(mid), np.sin(mid)
        dx_w = np.stack([cm * dx_b[..., 0] - sm * dx_b[..., 1], sm * dx_b[..., 0] + cm * dx_b[..., 1]], -1)
        new_c = c_w + dx_w
        hw = o.heading_weight * RHO
        new_err = np.linalg.norm(g_c - new_c, axis=-1) + hw * np.abs(_wrap(gth - (tth + dth_pred)))
        gain = np.linalg.norm(g_c - c_w) + hw * abs(dth) - new_err  # (N, nL)
        # steps: approach (0 if already on this line of action) + pushing
        dist_pre = np.linalg.norm(pre - tip_b, axis=1)
        lateral = np.abs((tip_b - contact)[:, 0] * u[:, 1] - (tip_b - contact)[:, 1] * u[:, 0])
        behind = ((contact - tip_b) * u).sum(1)
        on_line = (lateral < 0.006) & (behind > -0.004) & (behind < STICK_RADIUS + o.clearance + 0.01)
        engaged = on_line & (tip[2] < _Z_PUSH)
        approach = np.where(engaged, 0.0, dist_pre / o.approach_speed + o.approach_overhead)
        steps = approach[:, None] + np.arange(1, Ls.shape[1] + 1)[None, :]
        score = gain / steps
        best_l = score.argmax(1)
        best = score[np.arange(len(score)), best_l]
        # a push that stalls (the stick jammed, or blocked on its way) is banned for a while
        cur = self.current
        if cur is not None and len(self.history) >= _STALL_STEPS:
            (e0, d0, _), (e1, d1, eng1) = self.history[-_STALL_STEPS], self.history[-1]
            if eng1:
                stalled = e0 - e1 < 0.001
            else:  # blocked, or an approach that takes far longer than crossing the workspace does
                stalled = np.linalg.norm(d1 - d0) < 0.003 or len(self.history) >= _APPROACH_STEPS
            if stalled:
                self.ban_until[cur] = step + 20
        best = np.where(self.ban_until >= step, -np.inf, best)
        # approach cost of crossing over the T, only for the few best (path checks are the slow part)
        order = np.argsort(-best)[:12]
        order = order[~engaged[order]]
        blocked = ~_paths_clear(tip_b, pre[order], STICK_RADIUS + 0.004)
        i = order[blocked]
        best[i] = gain[i, best_l[i]] / (steps[i, best_l[i]] + 2 * (o.z_high - o.z_low) / 0.02)
        top = best.max()
        if cur is not None and best[cur] >= (1.0 - o.switch_tol) * top and best[cur] > 0:
            chosen = cur
        else:
            near = np.flatnonzero(best >= top - abs(top) * o.tie_tol)
            chosen = int(self.rng.choice(near)) if len(near) > 1 else int(best.argmax())
        if chosen != cur:
            self.current = chosen
            self.history = []
            self.pushes.append(
                {
                    "step": step,
                    "face": FACE_NAMES[pl.face[chosen]],
                    "turn": "ccw" if h[chosen] > 1e-9 else ("cw" if h[chosen] < -1e-9 else "none"),
                    "contact_x": float(contact[chosen, 0]),
                    "heading_error": abs(dth),
                }
            )
        self.history.append((err, tip.copy(), bool(engaged[chosen])))
        push = _Push(u[chosen], float(h[chosen]), contact[chosen], int(pl.face[chosen]))
        return self._move(push, engaged[chosen], tip, state["tip_q"], tp, R, push_v)

    def _move(self, push, engaged, tip, tip_q, tp, R, push_v) -> np.ndarray:
        o = self.opts
        contact_w = tp + R @ push.contact
        u_w = R @ push.u
        pre_w = contact_w - (STICK_RADIUS + o.clearance) * u_w
        if engaged:
            # the touching point advances push_v along the line of action, which moves with the T
            target = np.append(contact_w - STICK_RADIUS * u_w + push_v * u_w, o.z_low)
            speed = 2.0 * push_v
        else:
            speed = o.approach_speed
            tip_b = R.T @ (tip[:2] - tp)
            pre_b = push.contact - (STICK_RADIUS + o.clearance) * push.u
            low = tip[2] < _Z_CLEAR
            v0, v1 = TEE_OUTLINE, np.roll(TEE_OUTLINE, -1, axis=0)
            over = _inside(tip_b) or _seg_dist(tip_b[None], v0, v1).min() < STICK_RADIUS + 0.001
            # above the pre-contact point the stick only comes down (a path check there, with its margin, could
            # send it up again: the stick would bob up and down forever)
            at_pre = np.linalg.norm(tip_b - pre_b) < 0.012
            if low and over:  # came down on (or at the edge of) the T: straight up again
                target = np.append(tip[:2], o.z_high)
            elif low and not at_pre and not _path_clear(tip_b, pre_b, STICK_RADIUS + 0.004):
                if not self._lifted:
                    self.lifts += 1
                    self._lifted = True
                target = np.append(tip[:2], o.z_high)  # rise first, then cross
            elif not low and np.linalg.norm(tip[:2] - pre_w) > 0.012:
                target = np.append(pre_w, o.z_high)
            else:
                self._lifted = False
                target = np.append(pre_w, o.z_low)
                if tip[2] > o.z_low + 0.01:
                    # a fast descent swings the tip sideways (by up to 2 cm, onto the T's edge): come down slowly
                    speed = o.descend_speed
        delta = target - tip
        n = np.linalg.norm(delta)
        if n > speed:
            delta *= speed / n
        action = np.zeros(6, dtype=np.float32)
        action[:3] = np.clip(delta / (0.1 * _TRACKING), -1.0, 1.0)
        # contacts tilt the stick, and a tilted hand hits the T: turn back to the start orientation (vertical). The
        # controller turns by minus this rotation vector for a positive action (sign measured on the simulator).
        if self.tip_q0 is None:
            self.tip_q0 = tip_q
        rv = -_rotvec_to(tip_q, self.tip_q0) / (0.1 * _TRACKING)
        n = np.linalg.norm(rv)
        action[3:] = rv / n if n > 1.0 else rv
        return action


def solve_pusht(
    env, seed: int | None = None, debug: bool = False, vis: bool = False, rng=None, record=None, **options: Any
):
    """Push the T onto its goal, closed loop, in ``pd_ee_delta_pose``; stop at the first success.

    Same calling convention as ManiSkill's motion-planning solutions: ``env`` is a (possibly wrapped, e.g. by
    ``RecordEpisode``) PushT-v1 env made with ``control_mode="pd_ee_delta_pose"``; it is reset with ``seed``.
    Returns the last ``env.step`` result ``(obs, reward, terminated, truncated, info)`` (check
    ``res[-1]["success"]``; ``res[-1]["elapsed_steps"]`` is the demo length). ``rng``: a ``numpy`` Generator or
    seed for the random choice between equally good pushes (default: derived from ``seed``, so a demo is a
    function of its seed). ``record``: a dict that, if given, receives ``"pushes"`` (one dict per push started),
    ``"lifts"`` and ``"actions"`` (T, 6), for :func:`strategy_summary` and replay checks. ``options``: fields of
    :class:`ExpertOptions`. ``debug``/``vis`` exist for the solver signature and are ignored.
    """
    del debug, vis
    opts = make_options(**options)
    check_expert_env(env, "solve_pusht", ENV_ID, CONTROL_MODE)
    if rng is None:
        rng = np.random.default_rng([seed if seed is not None else 0, 0x7054])
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    # A freshly built scene, as evaluation (reconfiguration_freq=1) and the dataset's replay use: on a reused scene
    # PhysX keeps contact caches across resets, so the same seed and actions could end elsewhere, and a closed-loop
    # demo would depend on the attempts this env made before it.
    env.reset(seed=seed, options={"reconfigure": True})
    expert = _Expert(opts, rng)
    actions = []
    res = None
    for step in range(opts.max_steps):
        action = expert.act(_state(env), step)
        actions.append(action)
        res = env.step(action)
        if bool(res[-1]["success"].item()):
            break
    if record is not None:
        record.update(pushes=expert.pushes, lifts=expert.lifts, actions=np.stack(actions))
    return res


def strategy_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Per-demo strategy from a ``record`` filled by :func:`solve_pusht`.

    Returns ``first_face`` (the T face of the first push), ``first_turn`` (``"ccw"``/``"cw"``/``"none"``: the turning
    sense of the first push), ``first_side`` (``"+x"``/``"-x"``/``"centre"``: the half of the T, in its own frame,
    first pushed), ``pushes`` (pushes started), ``lifts`` (times the stick crossed over the T) and ``steps``.
    """
    pushes = record["pushes"]
    first = pushes[0] if pushes else {"face": "none", "turn": "none"}
    x = first.get("contact_x", 0.0)
    side = "+x" if x > 0.01 else ("-x" if x < -0.01 else "centre")
    return {
        "first_face": first["face"],
        "first_turn": first["turn"],
        "first_side": side,
        "pushes": len(pushes),
        "lifts": int(record["lifts"]),
        "steps": int(len(record["actions"])),
    }


#: Where PushT-v1's flat ``state`` observation (31,) keeps the stick tip's position and the T's pose (position,
#: quaternion wxyz): agent qpos (7) and qvel (7), then tcp pose (7), goal position (3), T pose (7).
_OBS_TIP = slice(14, 17)
_OBS_TEE = slice(24, 31)
_TOUCH = STICK_RADIUS + 0.004  # tip-to-outline distance at which the stick counts as touching the T


def pusht_mode(states: np.ndarray) -> str:
    """The strategy of one PushT episode from its state observations ``states`` (T, 31): the half of the T, in the
    T's own frame, that the stick touched first: ``"+x"`` or ``"-x"`` (the two arms of the crossbar and the sides of
    the stem), ``"centre"`` (within 1 cm of the T's axis: the middle of the crossbar's back or the stem's end), or
    ``"none"`` if it never touched the T."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != 31:
        raise ValueError(f"pusht_mode: states must be (T, 31) PushT-v1 state observations, got {states.shape}")
    tip, tee = states[:, _OBS_TIP], states[:, _OBS_TEE]
    yaw = 2.0 * np.arctan2(tee[:, 6], tee[:, 3])
    c, s = np.cos(yaw), np.sin(yaw)
    d = tip[:, :2] - tee[:, :2]
    tip_b = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)  # R(yaw)^T d
    v0, v1 = TEE_OUTLINE, np.roll(TEE_OUTLINE, -1, axis=0)
    dist = _seg_dist(tip_b, v0, v1)  # (T, 8)
    touching = np.flatnonzero((dist.min(1) < _TOUCH) & (tip[:, 2] < _Z_PUSH))
    if len(touching) == 0:
        return "none"
    t = touching[0]
    f = int(dist[t].argmin())
    ab = v1[f] - v0[f]
    x = v0[f, 0] + np.clip(((tip_b[t] - v0[f]) @ ab) / (ab @ ab), 0.0, 1.0) * ab[0]  # nearest outline point's x
    return "+x" if x > 0.01 else ("-x" if x < -0.01 else "centre")
