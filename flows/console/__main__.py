"""`python -m flows.console` = `klb`."""

import sys

from flows.console import main

sys.exit(main())
