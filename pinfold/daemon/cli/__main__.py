"""``python -m pinfold.daemon.cli``: the ``pinfold`` command."""

import sys

from pinfold.daemon.cli.main import main

sys.exit(main())
