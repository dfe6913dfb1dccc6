"""Retraining the derived network of a genotype (pure PyTorch)."""
