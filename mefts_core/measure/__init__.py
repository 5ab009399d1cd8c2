"""Measurement: memory of a step, gradient fidelity, the analytic estimator, and the benchmark."""
