"""Top-down pose data: COCO / MPII / synthetic datasets, heatmap targets, inference.

What this is: the public API of the data pipeline (pure torch + numpy + OpenCV + pycocotools
+ pyarrow). What it is not: orchestration; nothing here imports ray, optuna or mlflow.

Pixel convention (every grid): pixel centres at integer coordinates, a grid of N pixels covers
[-0.5, N - 0.5]; heatmap x = (input x + 0.5) / 4 - 0.5. See ``transforms`` and ``heatmaps``.
"""

from nfs_orchestrator.data.coco import load_coco_index
from nfs_orchestrator.data.dataset import TopDownDataset, build_dataset, synthetic_root, worker_init
from nfs_orchestrator.data.heatmaps import (
    decode_heatmaps,
    encode_heatmaps,
    flip_back,
    heatmap_to_input,
    input_to_heatmap,
)
from nfs_orchestrator.data.index import AnnotationIndex, Instances
from nfs_orchestrator.data.inference import (
    Predictions,
    coco_results,
    evaluate_model,
    heatmap_coords_to_image,
    oks_nms,
    predict,
    rescore,
)
from nfs_orchestrator.data.mpii import load_mpii_index
from nfs_orchestrator.data.split import split_image_disjoint
from nfs_orchestrator.data.synthetic import write_synthetic_coco

__all__ = [
    "AnnotationIndex",
    "Instances",
    "Predictions",
    "TopDownDataset",
    "build_dataset",
    "coco_results",
    "decode_heatmaps",
    "encode_heatmaps",
    "evaluate_model",
    "flip_back",
    "heatmap_coords_to_image",
    "heatmap_to_input",
    "input_to_heatmap",
    "load_coco_index",
    "load_mpii_index",
    "oks_nms",
    "predict",
    "rescore",
    "split_image_disjoint",
    "synthetic_root",
    "worker_init",
    "write_synthetic_coco",
]
