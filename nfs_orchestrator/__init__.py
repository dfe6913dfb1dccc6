"""posenfs: distributed NAS orchestration for Pose Neural Fabrics Search (arXiv 1909.07068)."""

__version__ = "0.1.0"
