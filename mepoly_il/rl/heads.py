"""Policy heads for PPO over the action box ``[-1, 1]^d``, behind one interface.

Every head maps observations ``(B, obs_dim)`` to a distribution over actions in the box and tells the trainer
what it can compute exactly (class attributes ``exact_log_prob`` / ``exact_entropy`` and the ``quantities``
text):

========  ===============================  ======================================  =======================
head      action in the box                log-prob / PPO ratio                    entropy
========  ===============================  ======================================  =======================
gaussian  tanh-squashed diagonal Gaussian, exact density on the box (change of     estimate: exact base
          state-dependent mean and std     variables, log|det J| of tanh)          entropy + reparam. MC
                                                                                   of E log|det J|
gmm       tanh-squashed K-component        exact: logsumexp over components,       estimate: unbiased MC,
          Gaussian mixture                 minus log|det J|                        one reparam. sample
                                                                                   per component (MRP)
mepoly    polynomial exponential family    exact (quadrature log-partition)        exact (quadrature)
          on the box (``mepoly_il.poly``)
fpo       conditional flow matching,       surrogate: exp(mean over N (eps, t)     none
          Euler steps, env clips to box    pairs of CFM-loss(old) - CFM-loss(new))
========  ===============================  ======================================  =======================

Interface (all tensors float32, leading batch dim B):

- ``act(obs) -> (action (B, d), record)``: no grad; ``action`` is what the env receives (inside the box) and
  ``record`` holds per-sample tensors the trainer stores and hands back to ``evaluate``.
- ``evaluate(obs, record) -> (log_ratio (B,), entropy (B,) or None)``: with grad; ``log_ratio`` is log
  pi_new(a|s) - log pi_old(a|s) (or FPO's surrogate), ``entropy`` the exact value or a differentiable
  estimate.
- ``log_prob(obs, action) -> (B,)``: density w.r.t. Lebesgue measure on the box (not for FPO).
- ``sample(obs, n) -> (n, B, d)``: no grad, in the box (evaluation).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

_ATANH_EPS = 1e-6


def mlp(inp: int, out: int, hidden: int = 64, layers: int = 2) -> nn.Sequential:
    """inp -> hidden (ReLU) x layers -> out; the authors' 64-64 ReLU MLP."""
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


def tanh_log_det(u: Tensor) -> Tensor:
    """sum_j log(1 - tanh(u_j)^2), numerically stable: (..., d) -> (...)."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


def safe_atanh(a: Tensor) -> Tensor:
    return torch.atanh(a.clamp(-1.0 + _ATANH_EPS, 1.0 - _ATANH_EPS))


class PolicyHead(nn.Module):
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = "base"
    exact_log_prob: ClassVar[bool] = False
    exact_entropy: ClassVar[bool] = False
    quantities: ClassVar[str] = ""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim

    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def evaluate(self, obs: Tensor, record: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name} head has no density")

    def sample(self, obs: Tensor, n: int) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "head": self.name,
            "exact_log_prob": self.exact_log_prob,
            "exact_entropy": self.exact_entropy,
            "quantities": self.quantities,
        }


class TanhMixtureHead(PolicyHead):
    """Tanh-squashed Gaussian mixture with ``num_components`` components (K=1 is the Gaussian head).

    Bounded actions: the mixture lives on pre-squash ``u`` in R^d and the action is ``tanh(u)``, so log_prob
    is a density on the open box. The stored record keeps ``u`` so the update never inverts tanh at saturated
    actions. Means of K>1 components start spread over ``[-1, 1]^d`` in u-space (otherwise all components
    start identical and the mixture can never separate them).
    """

    name = "gmm"
    exact_log_prob = True
    exact_entropy = False
    quantities = (
        "log_prob exact (logsumexp over components, tanh log-det); entropy = unbiased reparameterised MC "
        "estimate, one sample per component weighted by the mixture weights"
    )

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_components: int = 4,
        hidden: int = 64,
        log_std_bounds: tuple[float, float] = (-5.0, 1.0),
        init_log_std: float = -0.5,
        entropy_samples: int = 4,
    ):
        super().__init__(obs_dim, act_dim)
        self.k = int(num_components)
        self.lo, self.hi = log_std_bounds
        self.entropy_samples = int(entropy_samples)
        self.trunk = mlp(obs_dim, hidden, hidden, layers=1)
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden, self.k * act_dim)
        self.log_std = nn.Linear(hidden, self.k * act_dim)
        self.logits = nn.Linear(hidden, self.k)
        with torch.no_grad():
            self.mean.weight.mul_(0.1)
            if self.k > 1:
                self.mean.bias.uniform_(-1.0, 1.0)
            else:
                self.mean.bias.zero_()
            self.log_std.weight.mul_(0.1)
            # invert the tanh range map so the initial log-std is init_log_std
            z = 2.0 * (init_log_std - self.lo) / (self.hi - self.lo) - 1.0
            self.log_std.bias.fill_(math.atanh(max(min(z, 0.999), -0.999)))
            self.logits.weight.mul_(0.1)
            self.logits.bias.zero_()

    def params(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> log-weights (B, K), means (B, K, d), stds (B, K, d)."""
        h = self.trunk(obs)
        mu = rearrange(self.mean(h), "b (k d) -> b k d", k=self.k)
        s = rearrange(self.log_std(h), "b (k d) -> b k d", k=self.k)
        log_std = self.lo + 0.5 * (self.hi - self.lo) * (torch.tanh(s) + 1.0)
        return torch.log_softmax(self.logits(h), -1), mu, log_std.exp()

    @staticmethod
    def _log_prob_u(u: Tensor, logw: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """log density of pre-squash u (..., B, d) under the mixture (B, K, ...) -> (..., B)."""
        comp = torch.distributions.Normal(mu, std).log_prob(u.unsqueeze(-2)).sum(-1)  # (..., B, K)
        return torch.logsumexp(comp + logw, dim=-1)

    def _sample_u(self, logw: Tensor, mu: Tensor, std: Tensor, n: int) -> Tensor:
        k = torch.distributions.Categorical(logits=logw).sample((n,))  # (n, B)
        idx = repeat(k, "n b -> n b 1 d", d=self.act_dim)
        m = torch.gather(repeat(mu, "b k d -> n b k d", n=n), 2, idx).squeeze(2)
        s = torch.gather(repeat(std, "b k d -> n b k d", n=n), 2, idx).squeeze(2)
        return m + s * torch.randn_like(m)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logw, mu, std = self.params(obs)
        u = self._sample_u(logw, mu, std, 1)[0]
        logp = self._log_prob_u(u, logw, mu, std) - tanh_log_det(u)
        return torch.tanh(u), {"u": u, "logp": logp}

    def entropy_estimate(self, logw: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """H = -sum_k w_k E_eps[log pi(tanh(mu_k + std_k eps))], reparameterised per component -> (B,)."""
        eps = torch.randn((self.entropy_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        u = mu + std * eps  # (S, B, K, d)
        u_flat = rearrange(u, "s b k d -> (s k) b d")
        logp = self._log_prob_u(u_flat, logw, mu, std) - tanh_log_det(u_flat)  # (S*K, B)
        logp = rearrange(logp, "(s k) b -> s b k", s=self.entropy_samples)
        return -(logw.exp() * logp).sum(-1).mean(0)

    def evaluate(self, obs: Tensor, record: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logw, mu, std = self.params(obs)
        u = record["u"]
        logp = self._log_prob_u(u, logw, mu, std) - tanh_log_det(u)
        return logp - record["logp"], self.entropy_estimate(logw, mu, std)

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        logw, mu, std = self.params(obs)
        u = safe_atanh(action)
        return self._log_prob_u(u, logw, mu, std) - tanh_log_det(u)

    @torch.no_grad()
    def sample(self, obs: Tensor, n: int) -> Tensor:
        logw, mu, std = self.params(obs)
        return torch.tanh(self._sample_u(logw, mu, std, n))


class TanhGaussianHead(TanhMixtureHead):
    """Tanh-squashed diagonal Gaussian with state-dependent mean and std (the K=1 mixture).

    The entropy is the exact Gaussian entropy of u plus a reparameterised estimate of E[log|det J_tanh(u)|].
    """

    name = "gaussian"
    quantities = (
        "log_prob exact (Gaussian + tanh log-det); entropy = exact base entropy + reparameterised MC "
        "estimate of E log|det J_tanh|"
    )

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, **kw):
        super().__init__(obs_dim, act_dim, num_components=1, hidden=hidden, **kw)

    def entropy_estimate(self, logw: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        mu, std = mu[:, 0], std[:, 0]
        base = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(-1)
        u = mu + std * torch.randn((self.entropy_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        return base + tanh_log_det(u).mean(0)


class MePolyHead(PolicyHead):
    """Polynomial exponential-family density on the box: natural parameters from a 64-64 MLP, distribution
    from :class:`mepoly_il.poly.PolynomialFamily` (exact quadrature log-partition, exact entropy, continuous
    samples).

    ``lambda_clip`` bounds the natural parameters smoothly (``c * tanh(x / c)``, the family's ``soft_clip``)
    instead of the authors' hard clamp, which zeroes gradients when saturated; ``None`` disables it. Rows with
    the same observation share one log-partition (the bandit's constant state makes every row identical).
    """

    name = "mepoly"
    exact_log_prob = True
    exact_entropy = True
    quantities = "log_prob exact (quadrature log-partition); entropy exact (quadrature); samples continuous"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        order: int = 8,
        basis: str = "legendre",
        lambda_clip: float | None = None,
        hidden: int = 64,
        family_kwargs: dict | None = None,
    ):
        super().__init__(obs_dim, act_dim)
        from mepoly_il.poly import PolynomialFamily

        self.family = PolynomialFamily(
            dim=act_dim,
            order=order,
            basis=basis,
            clip=lambda_clip,
            soft_clip=lambda_clip is not None,
            **(family_kwargs or {}),
        )
        self.order, self.basis, self.lambda_clip = order, basis, lambda_clip
        self.net = mlp(obs_dim, self.family.num_features, hidden)

    def natural_params(self, obs: Tensor) -> Tensor:
        """(B, D) -> raw natural parameters (B, F); the family applies the clip."""
        return self.net(obs)

    def _unique(self, obs: Tensor) -> tuple[Tensor, Tensor] | None:
        """(unique obs (U, D), inverse (B,)) when few distinct rows make sharing worthwhile, else None."""
        if obs.shape[0] <= 8:
            return None
        uniq, inv = torch.unique(obs, dim=0, return_inverse=True)
        return (uniq, inv) if uniq.shape[0] <= 4 else None

    def _log_prob_and_entropy(self, obs: Tensor, action: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        shared = self._unique(obs)
        if shared is None:
            dist = self.family(self.natural_params(obs))
            return dist.log_prob(action), (dist.entropy() if with_entropy else None)
        uniq, inv = shared
        dist = self.family(self.natural_params(uniq))  # batch (U,)
        lp = dist.log_prob(action.unsqueeze(1))  # (B, U): cheap features, one log-partition per unique row
        lp = lp.gather(1, inv[:, None]).squeeze(1)
        return lp, (dist.entropy()[inv] if with_entropy else None)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        a = self.sample(obs, 1)[0]
        lp, _ = self._log_prob_and_entropy(obs, a, with_entropy=False)
        return a, {"action": a, "logp": lp}

    def evaluate(self, obs: Tensor, record: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        lp, ent = self._log_prob_and_entropy(obs, record["action"], with_entropy=True)
        return lp - record["logp"], ent

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        return self._log_prob_and_entropy(obs, action, with_entropy=False)[0]

    def entropy(self, obs: Tensor) -> Tensor:
        return self.family(self.natural_params(obs)).entropy()

    @torch.no_grad()
    def sample(self, obs: Tensor, n: int) -> Tensor:
        shared = self._unique(obs) if obs.shape[0] > 8 else None
        if shared is None:
            return self.family(self.natural_params(obs)).sample((n,))
        uniq, inv = shared
        s = self.family(self.natural_params(uniq)).sample((n, obs.shape[0]))  # (n, B, U, d)
        return s[:, torch.arange(obs.shape[0]), inv]


class FlowHead(PolicyHead):
    """FPO (flow policy optimisation): a velocity MLP ``v(s, x_t, t)`` integrated with ``flow_steps`` Euler
    steps from ``x_0 ~ N(0, I)`` (t=0) to the action (t=1), ``x_t = (1 - t) eps + t a``, CFM target ``a -
    eps``.

    The PPO ratio is the FPO surrogate ``exp(clamp(mean_n clamp(L_old,n - L_new,n)))`` over ``num_pairs``
    (eps, t) pairs drawn at rollout and stored. No density, no entropy. The flow is fitted on the raw
    (unclipped) sample; the env receives it clipped to the box (as in the authors' code). The authors use 50
    (Smooth World) and 2000 (bandit) pairs; we default to 32 to fit the CPU budget.
    """

    name = "fpo"
    exact_log_prob = False
    exact_entropy = False
    quantities = "no density: PPO ratio = FPO CFM-loss-difference surrogate; no entropy (bonus off)"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 64,
        flow_steps: int = 10,
        num_pairs: int = 32,
        clamp: float = 3.0,
    ):
        super().__init__(obs_dim, act_dim)
        self.flow_steps = int(flow_steps)
        self.num_pairs = int(num_pairs)
        self.clamp = float(clamp)
        self.net = mlp(obs_dim + act_dim + 1, act_dim, hidden)

    def velocity(self, obs: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """obs (..., D), x (..., d), t (..., 1) -> (..., d)."""
        return self.net(torch.cat([obs, x, t], dim=-1))

    @torch.no_grad()
    def _integrate(self, obs: Tensor) -> Tensor:
        x = torch.randn(*obs.shape[:-1], self.act_dim, dtype=obs.dtype, device=obs.device)
        dt = 1.0 / self.flow_steps
        for i in range(self.flow_steps):
            t = torch.full((*obs.shape[:-1], 1), i * dt, dtype=obs.dtype, device=obs.device)
            x = x + dt * self.velocity(obs, x, t)
        return x

    def cfm_loss(self, obs: Tensor, a: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Per-pair CFM loss: obs (B, D), a (B, d), eps (B, N, d), t (B, N) -> (B, N)."""
        n = eps.shape[1]
        tt = t.unsqueeze(-1)
        x_t = (1.0 - tt) * eps + tt * a.unsqueeze(1)
        v = self.velocity(repeat(obs, "b d -> b n d", n=n), x_t, tt)
        return 0.5 * ((v - (a.unsqueeze(1) - eps)) ** 2).mean(-1)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raw = self._integrate(obs)
        eps = torch.randn(obs.shape[0], self.num_pairs, self.act_dim, dtype=obs.dtype, device=obs.device)
        t = torch.rand(obs.shape[0], self.num_pairs, dtype=obs.dtype, device=obs.device)
        old = self.cfm_loss(obs, raw, eps, t)
        return raw.clamp(-1.0, 1.0), {"raw": raw, "eps": eps, "t": t, "cfm_old": old}

    def evaluate(self, obs: Tensor, record: dict[str, Tensor]) -> tuple[Tensor, None]:
        new = self.cfm_loss(obs, record["raw"], record["eps"], record["t"])
        diff = (record["cfm_old"] - new).clamp(-self.clamp, self.clamp).mean(-1)
        return diff.clamp(-self.clamp, self.clamp), None

    @torch.no_grad()
    def sample(self, obs: Tensor, n: int) -> Tensor:
        o = repeat(obs, "b d -> n b d", n=n)
        return self._integrate(o).clamp(-1.0, 1.0)


HEADS = {"gaussian": TanhGaussianHead, "gmm": TanhMixtureHead, "mepoly": MePolyHead, "fpo": FlowHead}


def make_head(name: str, obs_dim: int, act_dim: int, **kwargs) -> PolicyHead:
    """Build a head by name (one of :data:`HEADS`) with head-specific keyword arguments."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    return HEADS[name](obs_dim, act_dim, **kwargs)
