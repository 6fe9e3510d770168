"""Benchmarks of mobilenet-np against its peers (see benchmarks/README.md).

Every benchmark here measures the compiled engine, so tiered start (``forward/tiered.py``: the
NumPy path answers while a child process compiles the kernels) is turned off for this process
and every process it starts: with a cold kernel cache a worker would otherwise time the NumPy
path, then switch mid-run.  The first call compiles in the process instead, before timing.
``benchmarks/coldstart.py`` measures tiered start itself and clears this for its own runs.
"""

import os

os.environ.setdefault("MOBILENET_NP_TIERED", "0")
