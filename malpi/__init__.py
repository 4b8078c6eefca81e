"""MaLPi: a learning robot car on a Raspberry Pi."""

__version__ = "0.1.0"
