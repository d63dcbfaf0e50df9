"""Hash-seed independence: run one simulated seed under two ``PYTHONHASHSEED`` values.

Within one process, iteration over a ``set`` of strings is stable, so the same-seed repeat
check cannot see set-order dependence. Python randomizes string hashing per process, though:
two production processes may iterate the same set in different orders and disagree on
replay. This check runs ``duroxide-sim reproduce`` in two subprocesses with different hash
seeds and compares the trace hashes; a difference means the workflow's behaviour depends on
set/dict-of-hash order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

__all__ = ["check_hash_seed_independence"]


def _trace_hash(ref: str, seed: int, faults: str, hash_seed: int, cwd: str | None) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    proc = subprocess.run(
        [sys.executable, "-m", "duroxide_sim", "reproduce", ref, "--seed", str(seed), "--faults", faults, "--json"],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"reproduce failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def check_hash_seed_independence(
    ref: str, seed: int, *, faults: str = "none", hash_seeds: tuple[int, int] = (0, 1), cwd: str | None = None
) -> str | None:
    """None when both hash seeds give the same trace; else a message with both hashes."""
    a = _trace_hash(ref, seed, faults, hash_seeds[0], cwd)
    b = _trace_hash(ref, seed, faults, hash_seeds[1], cwd)
    if a["trace_sha256"] == b["trace_sha256"]:
        return None
    return (
        f"{ref} seed {seed}: the trace depends on PYTHONHASHSEED ({hash_seeds[0]}: {a['trace_sha256'][:16]}, "
        f"{hash_seeds[1]}: {b['trace_sha256'][:16]}); look for iteration over sets or hash-ordered "
        f"collections in orchestration code. Reproduce: PYTHONHASHSEED={hash_seeds[1]} duroxide-sim reproduce {ref} --seed {seed} --faults {faults} --trace"
    )
