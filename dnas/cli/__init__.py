"""Command-line entry points (thin: parse, build a config, call the library)."""
