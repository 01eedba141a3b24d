"""Synthetic data, classification datamodule and transforms."""
