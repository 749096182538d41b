"""Retraining a derived network (paper section 4.2): ImageNet pretraining
(:func:`run_imagenet`) and Re-ID finetuning with the eq. 4 loss (:func:`run_reid`),
evaluation of a checkpoint (:func:`evaluate_only`); recipes in ``retrain/*.yaml``
(:class:`ImageNetConfig`, :class:`ReIDConfig`). The CLI is ``dnas-retrain``
(``python -m dnas.retrain`` for torchrun).
"""
from dnas.retrain.config import ImageNetConfig, ReIDConfig, TrainConfig
from dnas.retrain.imagenet import run_imagenet
from dnas.retrain.reid import evaluate_only, run_reid

__all__ = ["ImageNetConfig", "ReIDConfig", "TrainConfig", "evaluate_only", "run_imagenet", "run_reid"]
