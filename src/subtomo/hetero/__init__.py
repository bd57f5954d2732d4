"""Heterogeneity analysis: a variational autoencoder on subtomograms (model, training), the
latent space (PCA, KMeans, UMAP), volumes at latent points and particle selection."""
