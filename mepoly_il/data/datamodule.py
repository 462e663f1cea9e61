"""``DemoDataModule``: windows of normalized states and actions from a mepoly-il zarr dataset.

Right after ``__init__`` (which reads only the zarr metadata) the module exposes ``obs_dim``, ``act_dim``, the
horizons ``obs_horizon``, ``act_horizon``, ``pred_horizon`` (given, or the dataset's task's from
:mod:`mepoly_il.tasks`), ``meta`` (provenance + ``episode_seeds``), ``obs_bounds`` and ``act_bounds``, so
LightningCLI can link them into the model (``apply_on="instantiate"``) and the policy can store the very same
normalizer bounds. ``setup()`` loads all arrays into RAM once (zarr reads cost
~300 µs each and zarr-3's asyncio thread does not mix with forked workers), normalizes them to [-1, 1], and cuts
windows (:mod:`mepoly_il.data.windows`). A batch is a dict::

    obs            (B, To, Ds) float32   normalized states, edge-padded
    action         (B, T, Da)  float32   normalized actions, edge-padded
    obs_is_pad     (B, To)     bool
    action_is_pad  (B, T)      bool

Training batches come from :class:`EpochBatchSampler`: their order is a pure function of (seed, epoch), and the
module counts the batches the fit loop has taken (``state_dict``, saved in every checkpoint), so a ``--ckpt_path``
resume continues with exactly the batch the interrupted run would have taken next.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from mepoly_il.data.normalize import DEFAULT_MARGIN, minmax_bounds
from mepoly_il.data.windows import check_horizons, gather_indices, split_episodes, window_starts
from mepoly_il.data.zarr_io import PROVENANCE_KEYS, episode_seeds, load_arrays, read_info
from mepoly_il.errors import UserError
from mepoly_il.tasks import find_task

_HORIZONS = ("obs_horizon", "act_horizon", "pred_horizon")


def normalize_array(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(..., D) -> (..., D) float32 mapped by [lo, hi] -> [-1, 1] (same affine map as ``Normalizer``)."""
    return (2.0 * (x - lo) / (hi - lo) - 1.0).astype(np.float32)


class WindowDataset(Dataset):
    """Windows over in-RAM normalized arrays. Indexing with an int gives one sample; with a list/array of ints it
    gives a whole batch through one numpy gather (used with a ``BatchSampler`` and ``batch_size=None``)."""

    def __init__(
        self,
        state: np.ndarray,
        action: np.ndarray,
        episode_ends: np.ndarray,
        episodes: np.ndarray,
        obs_horizon: int,
        pred_horizon: int,
        pad_after: int | None = None,
    ) -> None:
        self.state, self.action = state, action
        self.obs_horizon, self.pred_horizon = obs_horizon, pred_horizon
        self.starts, self.begin, self.end = window_starts(episode_ends, episodes, obs_horizon, pred_horizon, pad_after)

    def __len__(self) -> int:
        return int(len(self.starts))

    def get_batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """(B,) window indices -> batch dict (see module docstring)."""
        s, b, e = self.starts[index], self.begin[index], self.end[index]
        obs_idx, obs_pad = gather_indices(s, b, e, self.obs_horizon)
        act_idx, act_pad = gather_indices(s, b, e, self.pred_horizon)
        return {
            "obs": torch.from_numpy(self.state[obs_idx]),
            "action": torch.from_numpy(self.action[act_idx]),
            "obs_is_pad": torch.from_numpy(obs_pad),
            "action_is_pad": torch.from_numpy(act_pad),
        }

    def __getitem__(self, index: Any) -> dict[str, torch.Tensor]:
        if isinstance(index, int | np.integer):
            batch = self.get_batch(np.asarray([index]))
            return {k: v[0] for k, v in batch.items()}
        return self.get_batch(np.asarray(index, dtype=np.int64))


class EpochBatchSampler(Sampler[np.ndarray]):
    """Shuffled batches of window indices, in an order that is a pure function of (seed, epoch).

    The batches form one stream: stream batch ``g`` is batch ``g % len(self)`` of epoch ``g // len(self)``, whose
    order is ``numpy.random.default_rng([seed, epoch]).permutation(n)``. Each ``iter()`` yields from stream
    position ``start()`` (how many batches the consumer has taken so far) to the end of that epoch, so an iterator
    made after a resume, or one made while the previous one still held a prefetched batch, continues exactly where
    the consumer stopped, whatever the consumer counts as an epoch. Without ``start`` (or when it gives None) an
    ``iter()`` continues after the last batch the previous one yielded. ``whole_epochs`` starts every ``iter()`` at
    its epoch's first batch (for wrappers that list one whole epoch, as Lightning's distributed sampler does).

    Args:
        n: number of windows.
        batch_size: windows per batch.
        drop_last: drop the last batch of an epoch when it is smaller than ``batch_size``.
        seed: seed of the order (any int).
        start: callable giving the stream position of the next batch, or None to continue the previous iterator.
        whole_epochs: start every ``iter()`` at an epoch's first batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        drop_last: bool,
        seed: int,
        start: Callable[[], int | None] | None = None,
        whole_epochs: bool = False,
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"EpochBatchSampler needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.drop_last = int(n), int(batch_size), bool(drop_last)
        self.seed = int(seed) % 2**64  # SeedSequence takes non-negative ints
        self.start, self.whole_epochs = start, whole_epochs
        self._next = 0  # stream position after the last batch yielded

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """(n,) int64: the window order of ``epoch``."""
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def __iter__(self) -> Iterator[np.ndarray]:
        per_epoch = len(self)
        position = self.start() if self.start is not None else None
        position = self._next if position is None else position
        epoch, first = divmod(int(position), per_epoch)
        if self.whole_epochs:
            first = 0
        order = self.order(epoch)
        for j in range(first, per_epoch):
            self._next = epoch * per_epoch + j + 1
            yield order[j * self.batch_size : (j + 1) * self.batch_size]


class _ResumableLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes mid-epoch correctly (so Lightning does not warn that it cannot).

    Its position is restored by :meth:`DemoDataModule.load_state_dict`, not here: the state saved with the loader
    would count batches the fetcher prefetched but the fit loop never trained on.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def run_seed() -> int:
    """The run's global seed as ``seed_everything`` (LightningCLI's ``seed_everything``) recorded it; 0 if unset."""
    import os

    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value not in (None, "") else 0


def resolve_horizons(
    path: str, env_id: str | None, obs_horizon: int | None, act_horizon: int | None, pred_horizon: int | None
) -> dict[str, int]:
    """The given horizons, each None replaced by the registered task's; validated (``To + Ta - 1 <= T``).

    A None horizon for a dataset whose ``env_id`` is not a registered task is a :class:`UserError`.
    """
    given = dict(zip(_HORIZONS, (obs_horizon, act_horizon, pred_horizon), strict=True))
    missing = [k for k, v in given.items() if v is None]
    if missing:
        task = find_task(str(env_id)) if env_id else None
        if task is None:
            flags = " ".join(f"--data.{k} N" for k in missing)
            raise UserError(
                f"{path}: its env_id {env_id!r} is not a registered task, so its horizons are unknown; pass {flags} "
                "(or register the task with mepoly_il.tasks.register_task)"
            )
        given.update({k: getattr(task, k) for k in missing})
    check_horizons(given["obs_horizon"], given["act_horizon"], given["pred_horizon"])
    return {k: int(v) for k, v in given.items()}


class DemoDataModule(L.LightningDataModule):
    """Demo windows for imitation learning from a mepoly-il zarr dataset.

    Args:
        path: the ``.zarr`` dataset (``mepoly-il data prepare`` writes one).
        obs_horizon: To, observations per window; None = the registered task's (the dataset's ``env_id``).
        act_horizon: Ta, actions executed per chunk (only validated here; the policy uses it); None = the task's.
        pred_horizon: T, actions per window; None = the task's. Needs ``To + Ta - 1 <= T``.
        batch_size: windows per batch.
        val_ratio: fraction of whole episodes held out for validation; 0 gives no validation loader.
        num_workers: DataLoader workers (0 is usually fastest: a batch is one numpy gather).
        seed: seed of the train/val episode split and of the shuffling; None (default) = the run's seed
            (``seed_everything``, read from ``PL_GLOBAL_SEED`` at setup; 0 if none was set), so runs with
            different seeds also differ in split and order. An explicit value wins.
        max_episodes: use only the first N episodes (ManiSkill's ``--num-demos`` convention); None = all.
        norm_margin: relative margin of the min-max normalizer (see ``normalize.minmax_bounds``).
    """

    def __init__(
        self,
        path: str,
        obs_horizon: int | None = None,
        act_horizon: int | None = None,
        pred_horizon: int | None = None,
        batch_size: int = 256,
        val_ratio: float = 0.1,
        num_workers: int = 0,
        seed: int | None = None,
        max_episodes: int | None = None,
        norm_margin: float = DEFAULT_MARGIN,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if max_episodes is not None and max_episodes < 1:
            raise UserError(f"data.max_episodes must be >= 1 or null, got {max_episodes}")
        if not 0.0 <= norm_margin < 1.0:
            raise UserError(f"data.norm_margin must be in [0, 1), got {norm_margin}")
        self.path = str(path)
        self.batch_size, self.val_ratio, self.num_workers = int(batch_size), float(val_ratio), int(num_workers)
        self.seed: int | None = None if seed is None else int(seed)  # resolved at setup (see run_seed)
        self.max_episodes, self.norm_margin = max_episodes, float(norm_margin)
        split_episodes(2, self.val_ratio, 0)  # validates val_ratio early with the same message

        info = read_info(self.path)
        self.info = info
        env_id = info.provenance.get("env_id")
        horizons = resolve_horizons(self.path, env_id, obs_horizon, act_horizon, pred_horizon)
        self.obs_horizon, self.act_horizon, self.pred_horizon = (horizons[k] for k in _HORIZONS)
        self.hparams.update(horizons)  # checkpoints record the horizons used, not None
        self.obs_dim, self.act_dim = info.obs_dim, info.act_dim
        self.stats = info.stats
        self.obs_bounds = minmax_bounds(info.stats["state"]["min"], info.stats["state"]["max"], self.norm_margin)
        self.act_bounds = minmax_bounds(info.stats["action"]["min"], info.stats["action"]["max"], self.norm_margin)
        seeds = episode_seeds(self.path)
        self.num_episodes = min(len(seeds), max_episodes) if max_episodes else len(seeds)
        meta = {k: info.provenance.get(k) for k in PROVENANCE_KEYS}
        meta["dataset_path"] = self.path
        # Every seed in the file, not only the ones trained on: evaluation must avoid all of them.
        meta["episode_seeds"] = seeds
        meta["num_episodes_used"] = self.num_episodes
        self.meta: dict[str, Any] = meta
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None
        #: training batches the fit loop has taken so far (this rank's count; checkpointed by state_dict)
        self.train_batches_taken = 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = load_arrays(self.path)
        ends = arrays.episode_ends[: self.num_episodes]
        n_frames = int(ends[-1])
        state = normalize_array(arrays.state[:n_frames], *self.obs_bounds)
        action = normalize_array(arrays.action[:n_frames], *self.act_bounds)
        if self.seed is None:
            self.seed = run_seed()
            self.hparams.update(seed=self.seed)  # checkpoints record the seed used, not None
        self.train_episodes, self.val_episodes = split_episodes(self.num_episodes, self.val_ratio, self.seed)
        make = lambda eps: WindowDataset(state, action, ends, eps, self.obs_horizon, self.pred_horizon)
        self.train_set = make(self.train_episodes)
        self.val_set = make(self.val_episodes) if len(self.val_episodes) else None
        if len(self.train_set) == 0:
            raise UserError(
                f"{self.path}: no training windows (episodes shorter than the horizons?); lower data.pred_horizon"
            )

    def _loader(self, ds: WindowDataset, train: bool) -> DataLoader:
        # Drop a ragged last batch only when there is more than one batch, so tiny datasets still train.
        drop_last = train and len(ds) > self.batch_size
        if train:
            trainer = self._trainer_or_none()
            world = int(getattr(trainer, "world_size", 1) or 1)
            batches = EpochBatchSampler(
                len(ds), self.batch_size, drop_last, self.seed, start=self._stream_position,
                whole_epochs=world > 1,  # one rank's count does not give the global position mid-epoch
            )  # fmt: skip
        else:
            batches = BatchSampler(SequentialSampler(ds), batch_size=self.batch_size, drop_last=False)
        return _ResumableLoader(
            ds,
            sampler=batches,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator for the workers' base seed: a new iterator must not draw from the global torch RNG,
            # whose state a resume restores.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    def _stream_position(self) -> int | None:
        """The training stream's next batch (all ranks together) inside a Lightning fit; None outside one."""
        trainer = self._trainer_or_none()
        if trainer is None:
            return None
        return self.train_batches_taken * int(getattr(trainer, "world_size", 1) or 1)

    # -- resume: the training stream's position ------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self._trainer_or_none()
        if trainer is not None and trainer.training:
            self.train_batches_taken += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"train_batches_taken": self.train_batches_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_batches_taken = int(state_dict.get("train_batches_taken", 0))

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.train_set is None:
            self.setup("fit")
        if self.val_set is None:
            return []
        return self._loader(self.val_set, train=False)
