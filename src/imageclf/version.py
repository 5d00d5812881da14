"""The package version, in a leaf module: the bundle writer, the CLI and the OpenAPI
document read it without importing the package face (``imageclf/__init__.py``), and
pyproject.toml takes the distribution's version from here."""

__version__ = "0.1.0"
