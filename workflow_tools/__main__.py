"""`python -m workflow_tools ...`: see workflow_tools.cli."""

import sys

from .cli import main

sys.exit(main())
