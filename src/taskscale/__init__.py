"""taskscale: see a Task API scale for real."""

__version__ = "0.2.1"
