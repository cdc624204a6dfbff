"""`make bench` section: daemon-to-daemon fetch (see node_bench.fetch_rows)."""

from tools.bench.node_bench import fetch_rows as run  # noqa: F401
