"""Signed, versioned names for content (DESIGN.md "Names"): the pure part.

``records`` (record types, canonical encoding, Ed25519 signatures, key IDs),
``refs`` (parsing ``NAME[@REF][/path]``), ``book`` (the grow-only record set
and each name's versions, tags and publishers; ref resolution) and ``carrier`` (records inside the cluster
pinset). No I/O: the daemon side is ``pinfold/daemon/names/``.
"""
