"""PPO that learns: GAE against hand-computed advantages, a short bandit run whose reward rises, and the `rl ppo`
settings (presets under explicit values, validation errors as one `error:` line)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mepoly_il.cli import main as cli_main
from mepoly_il.cli.rl import parse_ppo
from mepoly_il.rl.ppo import gae


def test_gae_matches_hand_computed_advantages():
    # 3 steps x 2 envs; env 0's episode ends at t=1 (a new one starts at t=2), env 1 runs through.
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0], [1.0, 0.5], [2.0, 1.5]], dtype=torch.float64)
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    next_value = torch.tensor([4.0, 2.0], dtype=torch.float64)
    adv, ret = gae(rewards, values, dones, next_value, gamma, lam)
    # delta_t = r_t + gamma V_{t+1} (1 - done_t) - V_t;  A_t = delta_t + gamma lam (1 - done_t) A_{t+1}
    # env 0: d2 = 0 + .9*4 - 2 = 1.6; d1 = 2 - 1 = 1.0 (done: no bootstrap, no carry); d0 = 1 + .9*1 - .5 = 1.4
    #        A = (1.4 + .72*1.0, 1.0, 1.6) = (2.12, 1.0, 1.6)
    # env 1: d2 = 3 + .9*2 - 1.5 = 3.3; d1 = 1 + .9*1.5 - .5 = 1.85; d0 = 0 + .9*.5 - 1 = -.55
    #        A2 = 3.3, A1 = 1.85 + .72*3.3 = 4.226, A0 = -.55 + .72*4.226 = 2.49272
    expected = torch.tensor([[2.12, 2.49272], [1.0, 4.226], [1.6, 3.3]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, expected + values, rtol=0, atol=1e-12)


def test_bandit_ppo_reward_rises():
    """Gaussian head on the lemniscate bandit: an untrained policy scores about 0.5 per action, a dozen PPO
    iterations of 256 one-step episodes push the batch mean reward above 0.9 (seed 0)."""
    from mepoly_il.envs.bandit import BanditTask, VecBandit
    from mepoly_il.rl.heads import make_head
    from mepoly_il.rl.ppo import ActorCritic, PPOConfig, train_ppo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        envs = VecBandit(BanditTask("lemniscate", cloud_seed=0), 256)
        agent = ActorCritic(make_head("gaussian", envs.obs_dim, envs.act_dim), envs.obs_dim)
        cfg = PPOConfig(num_envs=256, num_steps=1, iterations=12, lr=1e-3, gamma=1.0, gae_lambda=1.0, update_epochs=10)
        history = train_ppo(agent, envs, cfg, seed=0)
    finally:
        torch.set_num_threads(threads)
    returns = [row["episode_return"] for row in history]
    before, after = returns[0], float(np.mean(returns[-3:]))
    assert after > before + 0.2, returns
    assert after > 0.85, returns


def test_presets_apply_under_explicit_values():
    ns, ppo, head, env, ev = parse_ppo(["--env", "smoothworld-cshape", "--head", "fpo", "--out", "x"])
    # Smooth World preset, cshape's entropy coefficient, then FPO's (no entropy estimate)
    assert (ppo.num_envs, ppo.num_steps, ppo.iterations, ppo.update_epochs) == (128, 16, 30, 4)
    assert ppo.ent_coef == 0.0 and (head.order, head.lambda_clip, head.sample_nodes) == (5, 5.0, 65)
    assert ppo.clip_coef == 0.2 and env.max_steps == 256 and ev.eval_episodes == 200  # dataclass defaults
    ns, ppo, head, *_ = parse_ppo(
        ["--env", "smoothworld-cshape", "--head", "gmm", "--out", "x", "--ent-coef", "0.3", "--iterations=2"]
    )
    assert (ppo.ent_coef, ppo.iterations, ppo.num_envs) == (0.3, 2, 128) and ns.head == "gmm"
    ns, ppo, head, env, ev = parse_ppo(
        ["--env", "bandit-lemniscate", "--head", "mepoly", "--out", "x", "--lambda_clip", "0", "--seed", "3"]
    )
    assert (ppo.num_envs, ppo.num_steps, ppo.lr, ppo.ent_coef) == (1024, 1, 1e-4, 0.2)
    assert head.order == 14 and head.lambda_clip is None and ns.seed == 3 and ev.eval_samples == 4096


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--order", "0"], "--order 0"),
        (["--components", "0"], "--components 0"),
        (["--nodes", "1"], "--nodes 1"),
        (["--sigma", "0"], "--sigma 0"),
        (["--lr", "-1"], "--lr -1"),
        (["--num-envs", "3", "--num-steps", "5"], "not divisible"),
        (["--gamma", "1.5"], "--gamma 1.5"),
        (["--eval-samples", "0"], "--eval-samples 0"),
        (["--seed", "10000"], "--seed 10000"),
        (["--num-envs", "0.5"], "num_envs"),
        (["--bogus", "1"], "--bogus"),
    ],
)
def test_bad_settings_are_one_error_line(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    argv = ["rl", "ppo", "--env", "bandit-lemniscate", "--head", "gmm", "--out", str(out), *flags]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mepoly-il rl: error: ") and needle in err[0], err
    assert not out.exists()


def test_ppo_help_shows_field_docs(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["rl", "ppo", "--env", "bandit-two-moons", "--head", "mepoly", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for doc in ("parallel envs per rollout", "MePoly total degree K", "bandit reward width", "policy samples scored"):
        assert doc in text
    assert "default: 1024" in text  # the bandit preset is the shown default once --env is given
