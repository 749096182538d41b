"""``python -m dnas.search`` (and ``torchrun -m dnas.search``): same as ``dnas-search``."""
import sys

from dnas.cli.search import main

sys.exit(main())
