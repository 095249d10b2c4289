"""Experiment tracking: every run, artifact and measurement in MLflow, TensorBoard or W&B.

The top layer: trackers observe what train, optimize, bench and pipeline produce, after the
fact, from what each command returned or wrote into its run folder; nothing below imports this
package, and no stage knows a tracker exists. `options` holds the shared click options and the
one call a command makes (`tracked(result)`), `records` turns fopt's outputs into tracker-neutral
run records, `session` sends them to one backend (``*_backend.py``) and owns the failure policy
(one warning, then silence; never a failed or stalled run).
"""

from fopt.track.options import track_options, tracked

__all__ = ["track_options", "tracked"]
