"""The ``pinfold`` command line: ``main`` (entry point, error reporting),
``parser`` (argparse grammar), ``commands`` (the table of commands, one module
per area), ``localio`` (local files, stdout, progress) and ``format`` (errors
as one line or JSON, the exit-code table).

Imports ``pinfold.client`` and, for ``pinfold daemon``, the node's service;
nothing imports the CLI.
"""

from pinfold.daemon.cli.main import main

__all__ = ["main"]
