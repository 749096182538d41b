"""t-SNE of the learned embeddings, coloured by identity, with separability figures
(paper Appendix B: t-SNE of the features of networks with and without DCS-Attention).

The images of a seeded subset of identities are embedded, projected to 2-D with
scikit-learn's t-SNE (PCA initialisation, seeded) and drawn one panel per model. The
separability figures are computed on the embeddings themselves, not on the 2-D
projection (t-SNE distorts distances):

- kNN accuracy: leave-one-out k-nearest-neighbour identity classification with the
  Euclidean distance of the evaluation (each image's own entry excluded), a fraction in
  [0, 1]; chance is about ``1 / identities``.
- Fisher ratio: ``trace(S_b) / trace(S_w)``, the between-identity scatter of the class
  means over the within-identity scatter, both summed over images; higher is more
  separable, 0 when the identity means coincide.

With ``lda`` components the paper's procedure is followed: a linear discriminant
analysis (scikit-learn) fitted on the shown images projects the embeddings, the
projection is standardised (zero mean, unit variance per dimension), and the t-SNE and
both figures use the projected features.

NOTE: the default shows the embeddings without LDA. An LDA fitted on the very images it
projects separates them by construction when the embedding has more dimensions than
there are images (1984 against about a hundred here), so the separability it shows
says more about the projection than about the network; the raw embeddings are what
retrieval ranks. ``--lda K`` gives the paper's figure.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def choose_identities(pids: np.ndarray, num: int, seed: int, exclude: Sequence[int] = (-1, 0),
                      min_images: int = 2) -> np.ndarray:
    """``num`` identities (seeded, sorted) among those with at least ``min_images`` images.

    Args:
        pids: identities of the images.
        num: how many to choose (all when fewer).
        seed: the choice's seed.
        exclude: pids never chosen (test sets: ``-1`` junk and ``0`` distractors;
            training pids are relabelled from 0, so there only ``-1``).
        min_images: the fewest images an identity needs.
    """
    ids, counts = np.unique(pids, return_counts=True)
    ids = ids[(counts >= min_images) & ~np.isin(ids, list(exclude))]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=min(num, len(ids)), replace=False))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out kNN accuracy (majority of the ``k`` nearest other images; ties: the
    label of the nearest among the tied)."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    k = max(1, min(k, len(labels) - 1))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(features)
    dist, idx = nn.kneighbors(features)
    correct = 0
    for i in range(len(labels)):
        neigh = [j for j in idx[i] if j != i][:k]  # drop the image itself (not always first: duplicates)
        votes = labels[neigh]
        values, counts = np.unique(votes, return_counts=True)
        tied = values[counts == counts.max()]
        pred = next(v for v in votes if v in tied)  # the nearest of the most voted
        correct += int(pred == labels[i])
    return correct / len(labels)


def fisher_ratio(features: np.ndarray, labels: np.ndarray) -> float:
    """``trace(S_b) / trace(S_w)`` of the features grouped by ``labels``."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    mean = features.mean(0)
    between = within = 0.0
    for lab in np.unique(labels):
        f = features[labels == lab]
        mu = f.mean(0)
        between += len(f) * float(((mu - mean) ** 2).sum())
        within += float(((f - mu) ** 2).sum())
    return between / within if within > 0 else float("inf")


def tsne_2d(features: np.ndarray, seed: int, perplexity: float | None = None) -> tuple[np.ndarray, float]:
    """``(N, 2)`` t-SNE coordinates and the perplexity used (default ``min(30, (N-1)/3)``).

    Up to 1000 points the exact gradient is used (faster there than Barnes-Hut, whose
    threads contend on a busy machine); more points use Barnes-Hut.
    """
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = float(perplexity or max(2.0, min(30.0, (n - 1) / 3.0)))
    perplexity = min(perplexity, n - 1.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto",
                method="exact" if n <= 1000 else "barnes_hut")
    coords = tsne.fit_transform(np.asarray(features, dtype=np.float32))
    return coords, perplexity


def lda_features(features: np.ndarray, labels: np.ndarray, components: int) -> np.ndarray:
    """Standardised LDA projection to at most ``min(components, identities - 1)`` dimensions."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.preprocessing import StandardScaler

    k = max(1, min(components, len(np.unique(labels)) - 1, features.shape[1]))
    z = LinearDiscriminantAnalysis(n_components=k).fit_transform(features, labels)
    return StandardScaler().fit_transform(z)


def draw_tsne(panels: Sequence[dict], pids: np.ndarray, title: str):
    """Side-by-side scatter plots, one per model, the same colour per identity.

    Args:
        panels: per model ``{"label", "coords": (N, 2), "knn_accuracy", "knn_k", "fisher_ratio"}``.
        pids: ``(N,)`` identities of the points.
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = np.unique(pids)
    cmap = plt.get_cmap("tab20" if len(ids) > 10 else "tab10")
    colour = {p: cmap(i % cmap.N) for i, p in enumerate(ids)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 5.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        xy = panel["coords"]
        for p in ids:
            sel = pids == p
            ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=colour[p], label=str(p), edgecolors="none")
        ax.set_title(f"{panel['label']}\n{panel['knn_k']}-NN accuracy {100 * panel['knn_accuracy']:.1f}% | "
                     f"Fisher ratio {panel['fisher_ratio']:.2f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(ids) <= 20:
        axes[0, -1].legend(title="identity", fontsize=7, title_fontsize=8, loc="center left",
                           bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
