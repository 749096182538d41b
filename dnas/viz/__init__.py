"""Figures of a trained Re-ID network (paper section 4.7 Figure 1, Appendices A and B):
``dnas-visualize``.

- :mod:`dnas.viz.gradcam`: Grad-CAM maps (pytorch-grad-cam) of query images, for CNNs
  and token models (ViT), one model or several side by side.
- :mod:`dnas.viz.tsne`: t-SNE of the embeddings (scikit-learn), coloured by identity,
  with kNN accuracy and Fisher ratio.
- :mod:`dnas.viz.rank`: ranked gallery lists of the worst and best queries by AP.
- :mod:`dnas.viz.curves`: a run's training curves as a labelled grid (also
  ``plots/curves.png`` of every search and retrain run).
- :mod:`dnas.viz.loading`: the models and the data they are shown on.

Importing this package imports nothing heavy; each module imports its libraries.
"""
