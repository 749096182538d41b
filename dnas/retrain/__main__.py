"""``python -m dnas.retrain`` (and ``torchrun -m dnas.retrain``): same as ``dnas-retrain``."""
import sys

from dnas.cli.retrain import main

sys.exit(main())
