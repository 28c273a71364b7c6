"""Load tests: Locust runs with exact HDR latencies, SLO gates, baselines and replica sweeps.

Deliberately empty: ``locust_plugin`` imports ``taskscale.loadtest.metrics`` inside every Locust
process, and must not pull the runner (or itself, a second time) in through this package.
Import from the submodules: ``service`` (run_loadtest, rerender_run), ``spec`` (LoadTestSpec).
"""
