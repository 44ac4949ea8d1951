"""Evaluation: `mmlora eval` (run.py) generates answers (generate.py), scores them with the
field's metrics (metrics/) and writes predictions, metrics and reports (results.py, report.py,
plot.py)."""
