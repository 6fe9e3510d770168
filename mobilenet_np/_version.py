"""The package version, in a module of its own so that any layer (and ``weights_tools``) can
record it without importing the package's top level."""

__version__ = "0.1.0"
