"""The libp2p side of a node: the host (TCP, Noise, Yamux, identify, ping), its
streams, the node's identity key and Bitswap.

Imports ``pinfold.blockstore``, ``pinfold.config`` and libp2p; never the RPC,
the CLI or the node composition above it.
"""
