"""The package version (its own module, so that low layers can name it without importing
``dnas/__init__.py``). No paper counterpart."""

__version__ = "0.1.0"
