"""The optimization engine: model files and parameters in, files and measurements out.

It knows nothing of Flask or the database. It runs in worker processes and
talks to its caller through a `progress(pct, step)` callback and a
`cancelled()` check (see runner.py), so that the web process never loads an
uploaded model itself.
"""
