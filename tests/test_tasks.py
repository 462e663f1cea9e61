"""The task registry: validation, error messages, and a toy task added the README's way ("Extending: add a task")
and picked up by the data module, demo generation, dataset conversion and evaluation-env defaults. No simulator."""

from __future__ import annotations

import pytest

from mepoly_il.cli import main as cli_main
from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.maniskill import default_control_mode, demo_task
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.envs.maniskill import default_max_episode_steps
from mepoly_il.errors import UserError
from mepoly_il.eval.rollout import env_spec_for
from mepoly_il.tasks import TASKS, TaskSpec, find_task, get_task, register_task, task_ids

TOY = "ToyReach-v1"


@pytest.fixture
def registry():
    """The registry, restored to its built-in tasks afterwards (registering is global state)."""
    saved = dict(TASKS)
    yield TASKS
    TASKS.clear()
    TASKS.update(saved)


def _toy(**overrides) -> TaskSpec:
    fields = dict(
        env_id=TOY,
        demo_source=None,
        max_episode_steps=37,
        obs_dim=5,
        act_dim=3,
        control_mode="pd_joint_delta_pos",
        obs_horizon=3,
        act_horizon=4,
        pred_horizon=8,
    )
    return TaskSpec(**{**fields, **overrides})


# -- the registry itself -------------------------------------------------------------------------------------------
def test_builtin_tasks():
    assert task_ids() == ["PushCube-v1", "PickCube-v1", "StackCube-v1", "PushT-v1", "ReachAround-v1"]
    assert task_ids(with_demos=True) == ["PushCube-v1", "PickCube-v1", "StackCube-v1", "PushT-v1", "ReachAround-v1"]
    assert get_task("PushCube-v1").solver == "solvePushCube"
    assert get_task("PushT-v1").solver is None and get_task("PushT-v1").act_horizon == 1  # a scripted expert
    assert get_task("PushT-v1").demo_source == "mepoly_il.data.maniskill_pusht:solve_pusht"
    assert get_task("StackCube-v1").max_episode_steps == 200


def test_get_task_unknown_names_the_registered_tasks():
    with pytest.raises(UserError) as err:
        get_task("Nope-v1")
    msg = str(err.value)
    assert "'Nope-v1'" in msg and "register_task" in msg and "\n" not in msg
    for env_id in task_ids():
        assert env_id in msg
    assert find_task("Nope-v1") is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_episode_steps": 0}, "max_episode_steps must be an integer >= 1, got 0"),
        ({"obs_dim": 2.5}, "obs_dim must be an integer >= 1"),
        ({"eval_episodes": True}, "eval_episodes must be an integer >= 1"),
        ({"act_horizon": 7}, "obs_horizon - 1 + act_horizon (9) exceeds pred_horizon (8)"),
        ({"demo_source": "solvePushCube"}, "demo_source 'solvePushCube' is not"),
        ({"demo_source": ":f"}, "is not 'motion_planner:<solver>'"),
        ({"env_id": ""}, "env_id must be a non-empty string"),
    ],
)
def test_taskspec_validation(overrides, fragment):
    with pytest.raises(UserError) as err:
        _toy(**overrides)
    assert fragment in str(err.value)


def test_register_twice_needs_replace(registry):
    register_task(_toy())
    with pytest.raises(UserError, match=f"{TOY} is already registered; pass replace=True"):
        register_task(_toy(max_episode_steps=50))
    assert register_task(_toy(max_episode_steps=50), replace=True) is get_task(TOY)
    assert get_task(TOY).max_episode_steps == 50


# -- a toy task, registered the README's way, is read everywhere ---------------------------------------------------
def test_toy_task_is_picked_up_everywhere(registry, tmp_path):
    register_task(_toy())
    assert TOY in task_ids() and TOY not in task_ids(with_demos=True)
    path = make_synthetic_dataset(tmp_path / "toy.zarr", num_episodes=4, obs_dim=5, act_dim=3, env_id=TOY)

    # the data module: horizons from the task, dims from the data
    dm = DemoDataModule(str(path), batch_size=4, val_ratio=0.0)
    assert (dm.obs_horizon, dm.act_horizon, dm.pred_horizon) == (3, 4, 8)
    assert (dm.obs_dim, dm.act_dim) == (5, 3)
    assert (dm.hparams.obs_horizon, dm.hparams.pred_horizon) == (3, 8)  # checkpoints record the resolved values
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["obs"].shape == (4, 3, 5) and batch["action"].shape == (4, 8, 3)
    # an explicit horizon wins; the missing ones still come from the task
    dm = DemoDataModule(str(path), act_horizon=2)
    assert (dm.obs_horizon, dm.act_horizon, dm.pred_horizon) == (3, 2, 8)

    # evaluation envs: the task's episode limit, unless overridden; unregistered envs keep the dataset's value
    assert default_max_episode_steps(TOY) == 37
    assert env_spec_for({"env_id": TOY, "control_mode": "pd_joint_delta_pos"}).max_episode_steps == 37
    assert env_spec_for({"env_id": TOY, "control_mode": "x"}, max_episode_steps=5).max_episode_steps == 5
    other = {"env_id": "Unregistered-v1", "control_mode": "x", "max_episode_steps": 23}
    assert default_max_episode_steps("Unregistered-v1") is None
    assert env_spec_for(other).max_episode_steps == 23

    # dataset conversion defaults to the task's control mode
    assert default_control_mode(TOY) == "pd_joint_delta_pos"
    assert default_control_mode("Unregistered-v1") == "pd_ee_delta_pos"

    # demo generation: the task has no demo source yet
    with pytest.raises(UserError, match=f"--env-id {TOY}: this task has no demo source"):
        demo_task(TOY)


def test_toy_task_with_a_demo_source(registry, tmp_path, capsys):
    """A demo source is named by "package.module:function"; a wrong one fails with one line before any simulator
    starts, and nothing is written."""
    register_task(_toy(demo_source="json:dumps", demo_control_mode="pd_joint_delta_pos"))
    assert TOY in task_ids(with_demos=True)
    assert demo_task(TOY).demo_control_mode == "pd_joint_delta_pos"
    for source, fragment in (
        ("no_such_module_xyz:solve", "cannot import no_such_module_xyz"),
        ("json:nope", "no function 'nope'"),
    ):
        register_task(_toy(demo_source=source), replace=True)
        out = tmp_path / "raw"
        code = cli_main(["data", "generate", "--env-id", TOY, "--num-demos", "1", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], err
        assert not out.exists()


def test_unregistered_dataset_needs_explicit_horizons(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.zarr", num_episodes=3, env_id="Synthetic-v0")
    with pytest.raises(UserError) as err:
        DemoDataModule(str(path), pred_horizon=16)
    msg = str(err.value)
    assert str(path) in msg and "'Synthetic-v0' is not a registered task" in msg
    assert "--data.obs_horizon N --data.act_horizon N" in msg and "--data.pred_horizon" not in msg
    dm = DemoDataModule(str(path), obs_horizon=2, act_horizon=8, pred_horizon=16)
    assert (dm.obs_horizon, dm.act_horizon, dm.pred_horizon) == (2, 8, 16)


def test_lightning_cli_links_task_horizons_at_instantiation(registry, tmp_path, monkeypatch):
    """With no horizons on the command line, LightningCLI (links applied on instantiate) hands the task's horizons
    and the data's dims to the model."""
    import torch
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    register_task(_toy())
    path = make_synthetic_dataset(tmp_path / "toy.zarr", num_episodes=4, env_id=TOY)

    class Tiny(LightningModule):
        def __init__(
            self, obs_dim: int = 1, act_dim: int = 1, obs_horizon: int = 1, act_horizon: int = 1, pred_horizon: int = 1
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(obs_dim * obs_horizon, act_dim * pred_horizon)

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            for key in ("obs_horizon", "act_horizon", "pred_horizon", "obs_dim", "act_dim"):
                parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    monkeypatch.setattr("sys.argv", ["mepoly-il"])
    cli = CLI(
        Tiny,
        DemoDataModule,
        run=False,
        args=[f"--data.path={path}", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"],
    )
    hp = cli.model.hparams
    assert (hp.obs_horizon, hp.act_horizon, hp.pred_horizon, hp.obs_dim, hp.act_dim) == (3, 4, 8, 5, 3)
