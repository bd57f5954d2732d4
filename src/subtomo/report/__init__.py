"""Plots the job writers draw (FSC curves, orthoslices, angular distributions, latent spaces)."""

__all__ = [
    "latent_plots",
    "plots",
]
