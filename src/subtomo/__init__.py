"""subtomo: subtomogram averaging and heterogeneity analysis for cryo-ET, in PyTorch."""

__version__ = "0.1.0"
