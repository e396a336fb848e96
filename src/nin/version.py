"""nin's version: one place, read by the package, its metadata (pyproject.toml) and the run record."""

__version__ = "0.1.0"
