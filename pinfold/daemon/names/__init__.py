"""The daemon side of names (DESIGN.md "Names"): signing keys (``keys``), the
service that follows the cluster pinset and publishes records (``service``)
and the RPC methods (``rpc``). The pure core is ``pinfold/names/``.
"""
