"""Load tests: validated specs, SLO gates, baselines and replica sweeps over a target's stack.

Import from the submodules: ``service`` (run_loadtest, rerender_run), ``spec`` (LoadTestSpec).
The load generator itself (Locust, its plugin, HDR metrics) is ``taskscale.loadgen``.
"""
