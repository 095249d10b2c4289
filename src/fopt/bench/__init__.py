"""Measuring artifacts and putting honest estimates beside the measurements.

Three layers, imports pointing down: `measure` (machine facts, the multi-process harness,
profiles, page faults) < `costmodel` (the calibrated latency model: probes, fit, prediction,
the per-machine calibration cache) < the bench run itself (`run` measures rows, `estimates`
adds naive, roofline and calibrated estimates, `report` and `plots` show them).
"""
