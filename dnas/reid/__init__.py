"""Re-ID evaluation: feature extraction and CMC / mAP / mINP (paper section 4.1).

- :func:`evaluate` (a distance matrix) and :func:`evaluate_features` (features,
  distances computed chunk by chunk): Market-1501 protocol, see :mod:`dnas.reid.metrics`.
- :func:`extract_features`: embeddings of a loader, with flip averaging.
- :func:`pairwise_distance`: Euclidean or cosine distances.
- :func:`k_reciprocal_rerank` (distance matrices), :func:`k_reciprocal_rerank_features`
  and :func:`rerank_feature_chunks` (features): k-reciprocal re-ranking (Zhong et al.,
  CVPR 2017), memory-bounded, see :mod:`dnas.reid.rerank`.
"""
from dnas.reid.features import extract_features
from dnas.reid.metrics import evaluate, evaluate_features, pairwise_distance
from dnas.reid.rerank import k_reciprocal_rerank, k_reciprocal_rerank_features, rerank_feature_chunks

__all__ = ["evaluate", "evaluate_features", "extract_features", "k_reciprocal_rerank",
           "k_reciprocal_rerank_features", "pairwise_distance", "rerank_feature_chunks"]
