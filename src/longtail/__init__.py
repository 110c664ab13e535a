"""Long-tail text classification recipes: data, losses, metrics, reports."""

__version__ = "0.1.0"
