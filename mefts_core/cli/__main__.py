"""`python -m mefts_core.cli train|predict|sweep|bench ...`."""

import sys

from mefts_core.cli import main

sys.exit(main())
