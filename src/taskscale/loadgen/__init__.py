"""Locust as a measured load generator: the job and run model, the Locust plugin and its
channel, HDR metrics, and the run on this machine. Nothing here knows about targets; targets
that run Locust elsewhere (pods) build on it, and ``taskscale.loadtest`` drives it.

Deliberately empty: ``locust_plugin`` imports ``taskscale.loadgen.metrics`` inside every Locust
process (and inside pods, from a ConfigMap), and must not pull anything else in through this
package. Import from the submodules.
"""
