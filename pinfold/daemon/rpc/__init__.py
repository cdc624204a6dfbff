"""The control socket's RPC: the wire format (sans-IO ``wire``), the trio
``server``, and the ``connection`` a client opens to it.

Imports the standard library, trio and msgpack only; the node hands the
server its handlers.
"""
