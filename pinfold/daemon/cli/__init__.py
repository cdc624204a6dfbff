"""The ``pinfold`` command line: parsing and one function a command (``main``),
and how results and errors are printed (``format``: one line, JSON with
``--json``, the exit-code table).

Imports ``pinfold.client`` and, for ``pinfold daemon``, the node's service;
nothing imports the CLI.
"""

from pinfold.daemon.cli.main import main

__all__ = ["main"]
