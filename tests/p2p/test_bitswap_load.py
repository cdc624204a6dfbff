"""The load sampler the holder admission's headroom comes from (reads this machine).

A thread that sleeps is neither running nor runnable, whatever the machine's
load; one that spins is running or waiting for a core all the time: both hold
on a loaded machine too.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from pinfold.daemon.p2p.bitswap.load import LoadSampler

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the busy fraction reads /proc/thread-self/schedstat")


@linux_only
def test_a_sleeping_loop_counts_as_waiting_and_a_spinning_one_as_busy():
    sampler = LoadSampler()
    time.sleep(0.3)  # the measured behaviour: this thread idles
    idle_cores, busy = sampler.sample()
    assert busy is not None and busy < 0.3, busy
    assert idle_cores is not None and 0.0 <= idle_cores <= (os.cpu_count() or 1) + 0.5
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    _, busy = sampler.sample()
    assert busy is not None and busy > 0.8, busy
