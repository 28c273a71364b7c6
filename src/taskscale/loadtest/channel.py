"""Environment variables through which taskscale configures its Locust plugin.

Locust forks its workers from one command line and offers no other way into a plugin.
"""

from __future__ import annotations

RAW_DIR_ENV = "TASKSCALE_LOADTEST_RAW"  # where each worker writes its histograms
PROGRESS_ENV = "TASKSCALE_LOADTEST_PROGRESS"  # where the master writes the live status
RATE_ENV = "TASKSCALE_RATE"  # total target arrival rate, requests/s ("" = closed model)
WORKERS_ENV = "TASKSCALE_LOADTEST_WORKERS"  # how many final dumps the master waits for
STOP_WAIT_ENV = "TASKSCALE_LOADTEST_STOP_WAIT"  # seconds the master waits for them
