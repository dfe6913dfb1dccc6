"""The inner, differentiable search of one trial (pure PyTorch)."""
