"""The package version (read by ``fastdmf.__version__``, the build and ``versions()``)."""

__version__ = "0.1.0"
