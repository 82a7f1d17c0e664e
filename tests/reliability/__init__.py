"""Reliability suites: crash, fault and convergence tests (marker ``reliability``)."""
