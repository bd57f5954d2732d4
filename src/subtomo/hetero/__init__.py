"""Heterogeneity analysis: a variational autoencoder on subtomograms (model, training), the
latent space (PCA, KMeans, UMAP), volumes at latent points and particle selection.

Modules, in the order a run uses them: ``inputs`` (options, particles, poses, maps),
``model`` and ``forward`` (the network and its forward model), ``series`` (2D-stack sets:
the tilts' slice likelihood), ``run`` (a run in memory and
the terms of its loss), ``train`` (the loop: ``train``, ``resume``), ``checkpoints`` (the files
of a training folder), ``analysis`` (``analyze``), ``volumes`` (``eval_vol``), ``select``
(``select_particles``)."""

__all__ = ["analysis", "checkpoints", "forward", "inputs", "model", "run", "select", "series",
           "train", "volumes"]
