"""``python -m stfusion.cli``: the ``stfusion`` command."""

import sys

from stfusion.cli import main

sys.exit(main())
