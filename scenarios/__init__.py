"""Realistic workflows run by ``duroxide-sim run scenarios`` (the project's main job).

Each module defines ``NAME``, ``register(runtime)`` and ``CASES`` (a list of :class:`Case`).
Modules use only duroxide_sim's public names.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Case:
    instance: str
    orchestration: str
    input: Any
    expect: Any
    events: tuple[tuple[str, str, Any], ...] = ()
