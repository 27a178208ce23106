"""`python -m mechasandbox`."""

import sys

from mechasandbox.cli.main import main

sys.exit(main())
