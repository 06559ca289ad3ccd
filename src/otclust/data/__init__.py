"""Datasets: loading the benchmarks and user data into memory (``datasets``), the on-disk formats
(``formats``), and batched augmentation (``augment``)."""

from otclust.data.datasets import DATASET_NAMES, ImageDataset, conform, dataset_help, load_dataset, parse_spec

__all__ = ["ImageDataset", "load_dataset", "conform", "DATASET_NAMES", "dataset_help", "parse_spec"]
