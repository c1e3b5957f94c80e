"""pushd: a real-time push server on Twisted."""

__version__ = "0.1.0"
