"""``python -m subtomo`` (and ``torchrun -m subtomo``) runs the command line."""

import sys

from subtomo.cli import main

sys.exit(main())
