"""The DCS-DNAS search: config, bilevel loop, checkpoints, run directory, derive."""
