"""`python -m geomim.check`: see `geomim.check.cli`."""

import sys

from geomim.check.cli import main

sys.exit(main())
