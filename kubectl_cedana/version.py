"""The one place the project's version is written."""

__version__ = "0.1.0"
