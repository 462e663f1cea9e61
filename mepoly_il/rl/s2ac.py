"""S2AC (Stein soft actor-critic): the actor is an SVGD sampler of ``pi(a|s) ~ exp(Q(s, a) / alpha)`` whose
log-density follows in closed form from the SVGD updates (S2AC paper §3.2, Thm. 3.1 and Cor. 3.3).

Sampler, per state: ``m`` particles ``u^0 ~ q_0`` in pre-squash space, ``L`` SVGD steps
``u^{l+1}_i = u^l_i + eps phi(u^l_i)`` with the RBF kernel ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` and

    phi(u_i) = (1/m) sum_j [ k(u_j, u_i) s_j + grad_{u_j} k(u_j, u_i) ],   s_j = grad_u Q(s, tanh(u_j)) / alpha,

action ``a = tanh(u^L)``. Change of variables with ``log|det(I + eps grad phi)| ~ eps tr(grad phi)`` gives

    log q_L(u^L_i) = log q_0(u^0_i) - eps sum_l tr grad phi(u^l_i),
    tr grad phi(u_i) = -(1 / (m sigma^2)) sum_{j != i} k_ij [ (u_i - u_j)^T s_j + ||u_i - u_j||^2 / sigma^2 - d ],

(the paper drops the self term ``(1/m) tr grad s_i``, a Hessian; so do we), and ``log pi(a) = log q_L(u^L) -
log|det J_tanh(u^L)|``. ``q_0`` is ``N(0, init_std^2 I)`` for the particle version S2AC(phi) (no actor
parameters: only the critic learns) or ``N(mu_theta(s), std_theta(s)^2)`` for the amortised S2AC(phi, theta),
whose parameters are trained through the SVGD chain. The bandwidth is adaptive (:func:`rbf_bandwidth`) and
treated as a constant per step.

The drive ``s_j`` is selectable (``drive``): ``"grad_q_over_alpha"`` is the score of the paper's target
``exp(Q / alpha)``, as written above; ``"grad_q"`` drops the ``1 / alpha``, as the authors' public code does: their
particles follow ``grad Q`` whatever the temperature, and alpha enters only through ``alpha log pi`` in the soft
value (and the amortised actor's loss). The two agree at ``alpha = 1``; at ``alpha < 1`` the paper's drive is
``1 / alpha`` times stronger against the same kernel repulsion, at ``alpha > 1`` weaker. The trace uses whichever
``s_j`` moved the particles, so ``log q_L`` is the density of the sampler actually run in both cases. (Their code
also takes ``grad Q`` at the pre-squash point ``u`` itself; we differentiate ``Q(s, tanh(u))``, the action the
critic was trained on.)

Accuracy (measured, see ``tests/test_rl_s2ac.py``): the estimate is the mean-field change of density, so with
finite ``m`` it is right only for a moderate amount of flow. Once the particles have settled, ``phi`` vanishes
at the particles but its divergence does not, and ``-mean log q_L`` keeps falling by roughly
``O(eps L / m)``: the entropy is underestimated the longer SVGD runs past convergence.

The actor plugs into :func:`mepoly_il.rl.sac.train_sac` (critic target ``mean_i [Q'(s', a'_i) - alpha log
pi(a'_i)]`` with particles from the online critic; actor loss ``mean_i [alpha log pi(a_i) - Q(s, a_i)]``). The
temperature is fixed, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from mepoly_il.errors import UserError
from mepoly_il.rl.heads import mlp, tanh_log_det

ScoreFn = Callable[[Tensor], Tensor]  # particles (B, m, d) -> score grad log p (B, m, d)


BANDWIDTHS = ("log", "half_mean")
#: SVGD drive: the score of the paper's exp(Q / alpha), or the authors' code's grad Q (module docstring).
DRIVES = ("grad_q_over_alpha", "grad_q")


def rbf_bandwidth(u: Tensor, rule: str = "log") -> Tensor:
    """Adaptive ``sigma^2`` per state from the mean squared pairwise distance ``D``: ``u (B, m, d) -> (B, 1, 1)``,
    detached. ``"log"``: ``D / (4 log(m + 1))`` (the authors' RL default); ``"half_mean"``: ``D / 2`` (their
    density experiments)."""
    m = u.shape[1]
    d2 = torch.cdist(u.detach(), u.detach()).pow(2).mean((1, 2))
    s2 = d2 / (4.0 * math.log(m + 1)) if rule == "log" else d2 / 2.0
    return s2.clamp_min(1e-6)[:, None, None]


def svgd_direction(u: Tensor, score: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
    """SVGD update direction and the trace of its Jacobian (self term dropped).

    ``u, score (B, m, d)``, ``sigma2 (B, 1, 1)`` -> ``phi (B, m, d)``, ``trace (B, m)``.
    """
    m, d = u.shape[1], u.shape[2]
    diff = u[:, :, None, :] - u[:, None, :, :]  # (B, i, j, d): u_i - u_j
    sq = diff.pow(2).sum(-1)  # (B, i, j)
    k = torch.exp(-sq / (2.0 * sigma2))
    phi = (torch.einsum("bij,bjd->bid", k, score) + (k[..., None] * diff).sum(2) / sigma2) / m
    off = 1.0 - torch.eye(m, dtype=u.dtype, device=u.device)
    inner = torch.einsum("bijd,bjd->bij", diff, score) + sq / sigma2 - d
    trace = -(off * k * inner).sum(-1) / (m * sigma2[..., 0])
    return phi, trace


def svgd_sample(
    u0: Tensor,
    log_q0: Tensor,
    score_fn: ScoreFn,
    steps: int,
    step_size: float,
    create_graph: bool = False,
    bandwidth: str = "log",
) -> tuple[Tensor, Tensor]:
    """Run ``steps`` SVGD steps from particles ``u0 (B, m, d)`` with ``log q_0(u0) (B, m)``; return the particles
    and their closed-form log-density ``(B, m, d), (B, m)``. ``score_fn`` is called on particles that require
    grad; ``create_graph`` keeps the chain differentiable (amortised actor)."""
    u, logq = u0, log_q0
    for _ in range(steps):
        if not u.requires_grad:
            u = u.detach().requires_grad_()
        with torch.enable_grad():
            score = score_fn(u)
        if not create_graph:
            score, u = score.detach(), u.detach()
        phi, trace = svgd_direction(u, score, rbf_bandwidth(u, bandwidth))
        u = u + step_size * phi
        logq = logq - step_size * trace
    return u, logq


class SVGDActor(nn.Module):
    """The S2AC actor (interface of :class:`mepoly_il.rl.sac.HeadActor`).

    ``critic`` is the online twin critic whose ``min_q`` defines the sampler's target ``exp(Q / alpha)``;
    ``alpha`` is the (fixed) temperature; ``drive`` says whether the particles follow ``grad Q / alpha`` (the
    paper's target ``exp(Q / alpha)``) or ``grad Q`` (the authors' code). ``amortised=False`` is S2AC(phi),
    ``True`` S2AC(phi, theta). ``train_selection`` / ``eval_selection``: ``"random"`` particle, ``"softmax"`` over
    the particles' Q (the authors' test-time choice), or ``"max"``.
    """

    SELECTIONS = ("random", "softmax", "max")
    fixed_alpha = True  # the paper and the authors' code fix alpha (and the paper's drive reads it): never tuned

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        critic: nn.Module,
        alpha: float = 1.0,
        particles: int = 10,
        steps: int = 5,
        step_size: float = 0.1,
        init_std: float = 0.5,
        amortised: bool = False,
        hidden: int = 64,
        std_bounds: tuple[float, float] = (0.1, 1.0),
        train_selection: str = "random",
        eval_selection: str = "softmax",
        drive: str = "grad_q_over_alpha",
    ):
        super().__init__()
        if particles < 2:
            raise UserError(f"s2ac: particles={particles} must be >= 2 (SVGD needs interacting particles)")
        if steps < 0 or not step_size > 0 or not alpha > 0 or not init_std > 0:
            raise UserError(
                f"s2ac: need steps >= 0, step_size > 0, alpha > 0, init_std > 0; got steps={steps}, "
                f"step_size={step_size}, alpha={alpha}, init_std={init_std}"
            )
        for sel in (train_selection, eval_selection):
            if sel not in self.SELECTIONS:
                raise UserError(f"s2ac: selection {sel!r} is unknown; choose one of {self.SELECTIONS}")
        if drive not in DRIVES:
            raise UserError(f"s2ac: drive {drive!r} is unknown; choose one of {DRIVES}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.critic = [critic]  # a list keeps the critic's parameters out of the actor's
        self.alpha, self.m, self.steps, self.step_size = float(alpha), int(particles), int(steps), float(step_size)
        self.init_std, self.amortised, self.std_bounds = float(init_std), amortised, std_bounds
        self.train_selection, self.eval_selection, self.drive = train_selection, eval_selection, drive
        self.net = mlp(obs_dim, 2 * act_dim, hidden) if amortised else None

    def initial(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Particles from q_0 and their log-density: ``(B, D) -> (B, m, d), (B, m)``."""
        b, d = obs.shape[0], self.act_dim
        eps = torch.randn(b, self.m, d, dtype=obs.dtype, device=obs.device)
        if self.net is None:
            mu, std = torch.zeros(b, 1, d, dtype=obs.dtype), torch.full((b, 1, d), self.init_std, dtype=obs.dtype)
        else:
            mu, raw = self.net(obs).chunk(2, -1)
            lo, hi = self.std_bounds
            mu, std = mu[:, None], (lo + (hi - lo) * torch.sigmoid(raw))[:, None]
        u0 = mu + std * eps
        return u0, torch.distributions.Normal(mu, std).log_prob(u0).sum(-1)

    def sample(self, obs: Tensor, alpha: float | Tensor | None = None, create_graph: bool = False):
        """-> actions ``(B, m, d)`` in the box and ``log pi`` ``(B, m)``."""
        alpha = self.alpha if alpha is None else alpha
        temp = alpha if self.drive == "grad_q_over_alpha" else 1.0
        q = self.critic[0].min_q

        def score(u: Tensor) -> Tensor:
            qv = q(obs, rearrange(torch.tanh(u), "b m d -> m b d"))
            return torch.autograd.grad(qv.sum(), u, create_graph=create_graph)[0] / temp

        u0, logq0 = self.initial(obs)
        u, logq = svgd_sample(u0, logq0, score, self.steps, self.step_size, create_graph=create_graph)
        return torch.tanh(u), logq - tanh_log_det(u)

    def select(self, obs: Tensor, selection: str) -> Tensor:
        a, _ = self.sample(obs)
        a = a.detach()
        b = obs.shape[0]
        if selection == "random":
            idx = torch.randint(0, self.m, (b,))
        else:
            with torch.no_grad():
                qv = rearrange(self.critic[0].min_q(obs, rearrange(a, "b m d -> m b d")), "m b -> b m")
            idx = qv.argmax(1) if selection == "max" else torch.distributions.Categorical(logits=qv).sample()
        return a[torch.arange(b), idx]

    def act(self, obs: Tensor) -> Tensor:
        return self.select(obs, self.train_selection)

    def act_eval(self, obs: Tensor) -> Tensor:
        return self.select(obs, self.eval_selection)

    def objective(self, obs: Tensor, q, alpha: Tensor) -> tuple[Tensor, Tensor]:
        a, logp = self.sample(obs, alpha, create_graph=self.amortised)
        qv = rearrange(q(obs, rearrange(a, "b m d -> m b d")), "m b -> b m")
        return (qv - alpha * logp).mean(1), -logp.detach().mean(1)

    def soft_value(self, obs: Tensor, q, alpha: Tensor) -> Tensor:
        a, logp = self.sample(obs, alpha)
        with torch.no_grad():
            qv = rearrange(q(obs, rearrange(a.detach(), "b m d -> m b d")), "m b -> b m")
            return (qv - alpha * logp.detach()).mean(1)
