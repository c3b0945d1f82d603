"""Sample-quality metrics: the TF-exact Inception network, the Inception Score and FID (docs/metrics.md)."""

from igan.metrics.inception import (
    InceptionOutputs,
    InceptionV3TF,
    download_inception_weights,
    inception_outputs,
    load_inception,
    tf1_bilinear_resize,
)
from igan.metrics.scores import feature_statistics, frechet_distance, inception_score

__all__ = [
    "InceptionOutputs",
    "InceptionV3TF",
    "download_inception_weights",
    "feature_statistics",
    "frechet_distance",
    "inception_outputs",
    "inception_score",
    "load_inception",
    "tf1_bilinear_resize",
]
