"""The version, written once: pyproject.toml reads it from here (``[tool.setuptools.dynamic]``)."""

__version__ = "0.1.0"
"""The package's version (PEP 440)."""
