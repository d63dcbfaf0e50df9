"""Realistic workflows run by ``duroxide-sim run scenarios`` (the project's main job).

Each module defines ``SPEC``: a :class:`duroxide_sim.sim.harness.SimSpec` (handlers, starts,
signals, invariants) for the correct workflow, and optionally ``VARIANTS``: a dict of planted-bug
variants (``name -> SimSpec``) that the harness must catch. Modules use only public names of
duroxide_sim and run unchanged in production (``spec.setup(runtime, world)`` on a real Runtime).
"""
