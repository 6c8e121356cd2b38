"""Hyper-parameter sweeps (Ray Tune over full Ray Train runs) and ablation tables.

``vlsa.tune.sweep`` runs a sweep, ``vlsa.tune.trial`` is one trial (``vlsa.tune.report``: what it reports
to Tune), ``vlsa.tune.search`` picks the points, ``vlsa.tune.ablate`` tabulates a named grid
(``ray_jobs/ablate.py``), ``vlsa.tune.points`` turns named points into spaces (the spaces themselves are
in ``tune_spaces/``), ``vlsa.tune.overhead`` is the ``sweep-overhead`` benchmark. Only
``vlsa.tune.callback`` and ``vlsa.tune.search`` (loaded by the sweep) import Ray at module level; the rest
import it inside functions, so importing them never starts or needs Ray.
"""
