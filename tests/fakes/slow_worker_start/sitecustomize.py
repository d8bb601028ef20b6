"""Holds every Sanic worker of a router at interpreter start, for tests of a stop during start-up.

On the router's PYTHONPATH (tests/integration/test_shutdown.py puts this directory there), Python
imports this module first thing in every process of the router. Sanic's manager sets
SANIC_WORKER_NAME in the environment each worker process is spawned with (and in no other
process), so only the workers wait, for WORKER_START_DELAY_SECS, before importing anything: they
exist, and cannot have acknowledged their start-up, for as long as the test needs.
"""

import os
import time

if os.environ.get("SANIC_WORKER_NAME"):
    time.sleep(float(os.environ.get("WORKER_START_DELAY_SECS", "0")))
