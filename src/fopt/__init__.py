"""fopt: train, export, optimize and benchmark image classifiers for deployment."""

__version__ = "0.1.0"
