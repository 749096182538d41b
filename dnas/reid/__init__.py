"""Re-ID evaluation: feature extraction and CMC / mAP / mINP (paper section 4.1).

- :func:`evaluate` (a distance matrix) and :func:`evaluate_features` (features,
  distances computed chunk by chunk): Market-1501 protocol, see :mod:`dnas.reid.metrics`.
- :func:`extract_features`: embeddings of a loader, with flip averaging.
- :func:`pairwise_distance`: Euclidean or cosine distances.
"""
from dnas.reid.features import extract_features
from dnas.reid.metrics import evaluate, evaluate_features, pairwise_distance

__all__ = ["evaluate", "evaluate_features", "extract_features", "pairwise_distance"]
