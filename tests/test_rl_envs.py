"""Bandit and Smooth World dynamics and rewards on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mepoly_il.envs.bandit import BanditEnv, BanditReward, BanditTask, VecBandit
from mepoly_il.envs.smoothworld import (
    BENCHMARK_LAYOUTS,
    DEATH,
    LAYOUTS,
    SHORTEST_STEPS,
    SUCCESS,
    SmoothWorldEnv,
    VecSmoothWorld,
    bfs_min_steps,
    classify,
    make_layout,
    rollout_episodes,
    step_positions,
)


@pytest.mark.parametrize("target", ["lemniscate", "two_moons"])
@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_bandit_reward_is_the_kernel_of_the_nearest_target(target, sigma):
    task = BanditTask(target, sigma=sigma, num_points=512, cloud_seed=3)
    rf = BanditReward(task)
    on = rf.points[:5]
    assert np.allclose(rf(on), 1.0)
    a = np.array([[0.95, 0.95], [0.0, 0.9], [3.0, -3.0]])
    d = np.sqrt(((np.clip(a, -1, 1)[:, None] - rf.points[None]) ** 2).sum(-1)).min(1)  # brute force
    assert np.allclose(rf(a), np.exp(-(d**2) / (2 * sigma**2)))
    assert rf(a)[2] == rf(np.array([[1.0, -1.0]]))[0]  # actions are clipped to the box


def test_bandit_vec_and_gym_views_agree():
    task = BanditTask("two_moons", cloud_seed=1)
    venv = VecBandit(task, 4)
    assert venv.reset(0).shape == (4, 1)
    acts = np.array([[0.1, 0.2], [-0.5, 0.3], [0.7, -0.2], [0.0, 0.0]])
    _, r, term, trunc, _ = venv.step(acts)
    assert term.all() and not trunc.any()
    env = BanditEnv("two_moons", cloud_seed=1)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    assert env.step(acts[1])[1] == pytest.approx(float(r[1]))


def test_free_cell_counts_match_the_authors_layouts():
    expected = {
        "two_walls": 525,
        "four_walls": 589,
        "tree_in_the_middle": 590,
        "two_slits": 583,
        "cshape": 569,
    }
    for name, n in expected.items():
        assert int(make_layout(name).free.sum()) == n, name
    assert set(BENCHMARK_LAYOUTS) <= set(LAYOUTS)


def test_walls_cancel_the_whole_move_and_border_clips():
    lay = make_layout("cshape")  # wall column x = 17 for y in 7..17
    pos = np.array([[18.1, 12.5], [0.1, 0.1]])
    new, r = step_positions(lay, pos, np.array([[-1.0, 1.0], [-1.0, -1.0]]))
    assert np.allclose(new[0], pos[0])  # 17.85 is inside the wall: no move at all, no sliding in y
    assert np.allclose(new[1], [0.0, 0.0])  # the outer border clips instead
    assert (r == 0).all()


def test_death_and_goal_terminate_with_their_rewards():
    env = VecSmoothWorld("tree_in_the_middle", 2, seed=0)
    env.reset(seed=0)
    env.pos = np.array([[12.9, 12.5], [22.9, 12.5]])  # next to the death block (x 13-17) / the goal (x 23-24)
    _, r, term, trunc, info = env.step(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert list(r) == [-10.0, 20.0] and term.all() and not trunc.any()
    assert list(info["episode_outcome"]) == [DEATH, SUCCESS]
    assert np.allclose(info["final_obs"][1], ([23.15, 12.5] - np.array(12.5)) / 12.5, atol=1e-6)


def test_time_limit_is_truncation_not_termination():
    env = VecSmoothWorld("two_walls", 3, max_steps=5, seed=1)
    env.reset(seed=1)
    env.pos = np.full((3, 2), 12.5)
    for t in range(5):
        _, r, term, trunc, info = env.step(np.zeros((3, 2)))
        assert not term.any()
        assert trunc.all() == (t == 4)
    assert np.allclose(info["final_obs"], 0.0)  # the last obs before the autoreset
    assert (env.t == 0).all()


def test_rollout_classes_and_bfs_minimum():
    lay = make_layout("two_walls")
    up = rollout_episodes(lay, lambda o: np.tile([0.0, 1.0], (len(o), 1)), np.array([[12.5, 12.5]]))
    down = rollout_episodes(lay, lambda o: np.tile([0.3, -1.0], (len(o), 1)), np.array([[12.5, 12.5]]))
    assert up["outcome"][0] == SUCCESS and lay.classes[up["cls"][0]] == "top"
    assert up["length"][0] == SHORTEST_STEPS["two_walls"]["top"]
    assert lay.classes[down["cls"][0]] == "bottom" and down["length"][0] == 43
    assert bfs_min_steps(lay) == SHORTEST_STEPS["two_walls"]
    assert bfs_min_steps(make_layout("four_walls")) == SHORTEST_STEPS["four_walls"]


def test_route_classes_of_hand_made_paths():
    tree = make_layout("tree_in_the_middle")
    above = np.array([[2.5, 12.5], [12.0, 16.0], [15.0, 16.0], [23.5, 12.5]])
    assert tree.classes[classify(tree, above)] == "above"
    below = above * np.array([1.0, 0.0]) + np.array([0.0, 8.0])
    assert tree.classes[classify(tree, below)] == "below"
    c = make_layout("cshape")
    under = np.array([[19.5, 12.5], [19.5, 5.0], [5.0, 5.0], [5.0, 12.0], [11.0, 12.0]])
    assert c.classes[classify(c, under)] == "under"
    slits = make_layout("two_slits")
    assert slits.classes[classify(slits, np.array([[2.5, 12.5], [14.5, 18.5], [15.5, 18.5]]))] == "upper_slit"


def test_gymnasium_smoothworld_env():
    env = SmoothWorldEnv("four_walls", max_steps=10)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"start": (12.5, 12.5)})
    assert np.allclose(obs, 0.0)
    for _ in range(10):
        obs, r, term, trunc, _ = env.step(np.zeros(2, dtype=np.float32))
    assert trunc and not term and r == 0.0


def test_mountaincar_matches_gymnasium_dynamics_with_the_indicator_reward():
    import gymnasium as gym

    from mepoly_il.envs.mountaincar import VecMountainCar, scale_obs

    genv = gym.make("MountainCarContinuous-v0").unwrapped
    venv = VecMountainCar(1, max_steps=400, seed=0)
    venv.reset(seed=0)
    genv.reset(seed=0)
    genv.state = np.array([venv.pos[0], venv.vel[0]])
    rng = np.random.default_rng(1)
    reached = 0
    for _ in range(400):
        # a bang-bang policy that pumps energy (push along the velocity), with noise: it reaches the goal
        a = np.clip(np.sign(venv.vel) + (venv.vel == 0) + 0.3 * rng.standard_normal(1), -1, 1).astype(np.float32)
        g_obs, g_rew, g_term, _, _ = genv.step(a)
        obs, r, term, trunc, info = venv.step(a[None])
        assert np.allclose(info["final_obs"][0], scale_obs(g_obs[0:1], g_obs[1:2])[0], atol=1e-5)
        assert bool(term[0]) == bool(g_term) and r[0] == float(g_term)  # 1 at the goal, 0 elsewhere
        if g_term:
            reached += 1
            assert info["episode_done"][0] and info["episode_return"][0] == 1.0 and -0.6 <= venv.pos[0] <= -0.4
            genv.reset()
            genv.state = np.array([venv.pos[0], venv.vel[0]])
    assert reached >= 1


def test_mountaincar_minus1_pays_every_step_and_ends_at_the_goal():
    from mepoly_il.envs.mountaincar import VecMountainCar

    with pytest.raises(ValueError, match="minus1"):
        VecMountainCar(1, reward="shaped")
    goal, cost = VecMountainCar(2, max_steps=999, seed=3), VecMountainCar(2, max_steps=999, seed=3, reward="minus1")
    goal.reset(seed=3)
    cost.reset(seed=3)
    lengths = []
    for _ in range(400):  # push along the velocity: both cars reach the goal within 400 steps
        a = (np.sign(cost.vel) + (cost.vel == 0))[:, None]
        _, rg, tg, _, _ = goal.step(a)
        _, rc, tc, _, info = cost.step(a)
        assert (tg == tc).all() and (rc == -1.0).all() and (rg == tg).all()  # same dynamics, only the reward differs
        for i in np.flatnonzero(info["episode_done"]):
            assert tc[i] and info["episode_return"][i] == -info["episode_length"][i]
            lengths.append(int(info["episode_length"][i]))
    assert len(lengths) >= 2


def test_mountaincar_time_limit_is_truncation():
    from mepoly_il.envs.mountaincar import VecMountainCar

    env = VecMountainCar(3, max_steps=5, seed=0)
    obs = env.reset(seed=0)
    assert obs.shape == (3, 2) and (np.abs(obs) <= 1).all()
    for _ in range(5):
        _, r, term, trunc, info = env.step(np.zeros((3, 1)))
    assert trunc.all() and not term.any() and (r == 0).all() and (info["episode_length"] == 5).all()
    assert (env.t == 0).all()  # autoreset
