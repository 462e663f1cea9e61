"""RPG (reparameterised policy gradient, Huang et al., ICML 2023) on its 1-D toy bandit, with Gaussian REINFORCE
beside it.

The policy is latent-conditioned: ``z ~ pi(z|s)`` (categorical), ``a = tanh(u)``, ``u ~ N(mu(s, z), std(s, z)^2)``.
An auxiliary posterior ``p_phi(z|s, a)`` is fitted by cross-entropy on the policy's own samples, and the policy
gets ``log p_phi(z|s, a)`` as a bonus (the ELBO's cross-entropy term), which keeps the latents distinguishable,
so different ``z`` settle on different reward peaks. Per step, on a batch of samples (the published toy recipe):

- ``pi(a|s, z)`` by the path-wise gradient of ``w_r r(a) + w_info log p_phi(z|s, a) - ent_a log pi(a|s, z)``;
- ``pi(z|s)`` by REINFORCE with the batch-mean baseline on ``w_r r(a) - ent_z log pi(z|s)``;
- ``p_phi`` by cross-entropy; ``w_info``, ``ent_z``, ``ent_a`` decay geometrically.

The toy reward on ``x in (-1, 1)``: a narrow global peak 1.1 at ``x = -0.6`` and a broad local peak 0.5 just left
of ``x = 0.875``. Published outcome: RPG reaches about 1.1, Gaussian REINFORCE from ``N(0, 1)`` ends on the 0.5
peak.

:class:`LatentPolicy` is also a :class:`~mepoly_il.rl.heads.PolicyHead` (exact marginal ``log_prob`` by summing
over the latents) so the same policy can run on the project's bandits.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mepoly_il.errors import UserError
from mepoly_il.rl.heads import PolicyHead, tanh_log_det


def toy_reward(x: Tensor) -> Tensor:
    """The RPG toy bandit's reward on ``x in (-1, 1)``, differentiable almost everywhere: ``(...) -> (...)``."""
    peak = F.relu(-18.0 * (2.0 * x + 1.2) ** 2 + 1.1)
    broad = F.relu(-0.125 * (2.0 * x - 1.75) ** 2 + 0.5) * (x < 0.875).to(x.dtype)
    return peak + broad


@dataclass
class RPGBanditConfig:
    """The published toy-bandit recipe (RPG repository, ``tiny_rpg``)."""

    steps: int = 12_000
    """gradient steps"""
    batch_size: int = 256
    """samples per step"""
    num_latents: int = 5
    """categorical latent classes"""
    hidden: int = 64
    """width of the policy and posterior MLPs"""
    lr: float = 3e-4
    """Adam, policy and posterior"""
    w_r: float = 0.1
    """reward weight"""
    w_info: float = 0.8
    """weight of log p_phi(z|a) (decays)"""
    ent_z: float = 0.2
    """entropy weight of pi(z) (decays)"""
    ent_a: float = 0.2
    """entropy weight of pi(a|z) (decays)"""
    decay: float = 0.9995
    """per-step factor on w_info, ent_z, ent_a"""
    gaussian_lr: float = 1e-3
    """Adam for the Gaussian REINFORCE baseline"""
    log_every: int = 500
    """steps between history rows"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_latents", "hidden", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"rpg config: {name}={v!r} must be an integer >= 1")
        if not 0.0 < self.decay <= 1.0:
            raise UserError(f"rpg config: decay={self.decay} must lie in (0, 1]")
        for name in ("lr", "gaussian_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"rpg config: {name}={getattr(self, name)} must be > 0")


class LatentPolicy(PolicyHead):
    """``pi(z|s)`` (linear logits), ``pi(a|s, z)`` (tanh-squashed Gaussian from an ELU MLP on ``[s, onehot(z)]``)
    and the posterior ``p_phi(z|s, a)``."""

    name = "rpg"
    exact_log_prob = True
    exact_entropy = False
    quantities = "log_prob exact (sum over the categorical latent); no entropy"

    def __init__(self, obs_dim: int, act_dim: int, num_latents: int = 5, hidden: int = 64):
        super().__init__(obs_dim, act_dim)
        self.k = int(num_latents)
        self.prior = nn.Linear(obs_dim, self.k)
        self.policy = nn.Sequential(nn.Linear(obs_dim + self.k, hidden), nn.ELU(), nn.Linear(hidden, 2 * act_dim))
        self.posterior = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ELU(), nn.Linear(hidden, self.k))
        with torch.no_grad():
            self.prior.weight.zero_()
            self.prior.bias.zero_()

    def policy_parameters(self) -> list[nn.Parameter]:
        return [*self.prior.parameters(), *self.policy.parameters()]

    def gaussian(self, obs: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """obs (..., D), z (...) int -> mean, std (..., d)."""
        mu, log_std = self.policy(torch.cat([obs, F.one_hot(z, self.k).to(obs.dtype)], -1)).chunk(2, -1)
        return mu, log_std.clamp(-5.0, 2.0).exp()

    def rsample(self, obs: Tensor) -> dict[str, Tensor]:
        """One draw per row (path-wise in ``u``): z, log pi(z), u, a, log pi(a|z)."""
        logits = torch.log_softmax(self.prior(obs), -1)
        z = torch.distributions.Categorical(logits=logits).sample()
        mu, std = self.gaussian(obs, z)
        u = mu + std * torch.randn_like(mu)
        log_pa = torch.distributions.Normal(mu, std).log_prob(u).sum(-1) - tanh_log_det(u)
        return {"z": z, "log_pz": logits.gather(-1, z[..., None])[..., 0], "u": u, "a": torch.tanh(u), "log_pa": log_pa}

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        """Marginal density over the box: log sum_z pi(z|s) pi(a|s, z)."""
        u = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
        logits = torch.log_softmax(self.prior(obs), -1)  # (B, K)
        zs = torch.arange(self.k).expand(*obs.shape[:-1], self.k)
        mu, std = self.gaussian(obs[..., None, :].expand(*obs.shape[:-1], self.k, obs.shape[-1]), zs)
        comp = torch.distributions.Normal(mu, std).log_prob(u[..., None, :]).sum(-1)
        return torch.logsumexp(logits + comp, -1) - tanh_log_det(u)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.rsample(obs)
        return s["a"], {"action": s["a"], "logp": self.log_prob(obs, s["a"])}

    def evaluate(self, obs: Tensor, record: dict[str, Tensor]) -> tuple[Tensor, None]:
        return self.log_prob(obs, record["action"]) - record["logp"], None

    @torch.no_grad()
    def sample(self, obs: Tensor, n: int) -> Tensor:
        return self.rsample(obs.expand(n, *obs.shape))["a"]


def train_rpg_bandit(cfg: RPGBanditConfig, seed: int) -> tuple[LatentPolicy, list[dict]]:
    """RPG on the toy bandit; returns the policy and one row per ``log_every`` steps (batch mean reward)."""
    torch.manual_seed(seed)
    pol = LatentPolicy(1, 1, cfg.num_latents, cfg.hidden)
    opt_pi = torch.optim.Adam(pol.policy_parameters(), lr=cfg.lr)
    opt_post = torch.optim.Adam(pol.posterior.parameters(), lr=cfg.lr)
    obs = torch.zeros(cfg.batch_size, 1)
    w_info, ent_z, ent_a = cfg.w_info, cfg.ent_z, cfg.ent_a
    history, rewards, t0 = [], [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        s = pol.rsample(obs)
        r = toy_reward(s["a"][:, 0])
        log_post = torch.log_softmax(pol.posterior(torch.cat([obs, s["a"]], -1)), -1)
        info = log_post.gather(-1, s["z"][:, None])[:, 0]
        # pi(a|z): path-wise; pi(z): REINFORCE with the batch-mean baseline
        path = (cfg.w_r * r + w_info * info - ent_a * s["log_pa"]).mean()
        ret_z = (cfg.w_r * r - ent_z * s["log_pz"]).detach()
        score = ((ret_z - ret_z.mean()) * s["log_pz"]).mean()
        opt_pi.zero_grad(set_to_none=True)
        (-(path + score)).backward()
        opt_pi.step()
        post_loss = F.cross_entropy(pol.posterior(torch.cat([obs, s["a"].detach()], -1)), s["z"])
        opt_post.zero_grad(set_to_none=True)
        post_loss.backward()
        opt_post.step()
        w_info, ent_z, ent_a = w_info * cfg.decay, ent_z * cfg.decay, ent_a * cfg.decay
        rewards.append(r.mean().item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "reward": sum(rewards) / len(rewards), "time_s": time.perf_counter() - t0})
            rewards.clear()
    return pol, history


def train_gaussian_reinforce_bandit(cfg: RPGBanditConfig, seed: int) -> tuple[nn.Module, list[dict]]:
    """REINFORCE (batch-mean baseline) of a tanh-squashed Gaussian ``N(mu, std^2)`` started at ``N(0, 1)``."""
    torch.manual_seed(seed)
    params = nn.ParameterDict({"mu": nn.Parameter(torch.zeros(1)), "log_std": nn.Parameter(torch.zeros(1))})
    opt = torch.optim.Adam(params.parameters(), lr=cfg.gaussian_lr)
    history, rewards, t0 = [], [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        dist = torch.distributions.Normal(params["mu"], params["log_std"].exp())
        u = dist.sample((cfg.batch_size,))[:, 0]
        r = toy_reward(torch.tanh(u))
        loss = -((r - r.mean()) * dist.log_prob(u[:, None])[:, 0]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rewards.append(r.mean().item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "reward": sum(rewards) / len(rewards), "time_s": time.perf_counter() - t0})
            rewards.clear()
    return params, history


@torch.no_grad()
def expected_reward(sample_fn, n: int = 20_000) -> float:
    """Monte-Carlo E[r] of ``sample_fn(n) -> actions (n,)``."""
    return float(toy_reward(sample_fn(n)).mean())


def config_dict(cfg: RPGBanditConfig) -> dict:
    return asdict(cfg)
