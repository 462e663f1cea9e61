"""Datasets: ManiSkill h5 -> zarr, the zarr store, windows, stats, the LightningDataModule, LeRobot export."""
