"""Hash-seed independence: run one simulated seed (or a CI replay) under two ``PYTHONHASHSEED`` values.

Within one process, iteration over a ``set`` of strings is stable, so the same-seed repeat
check cannot see set-order dependence. Python randomizes string hashing per process, though:
two production processes may iterate the same set in different orders and disagree on
replay. This check runs ``duroxide-sim reproduce`` in two subprocesses with different hash
seeds and compares the trace hashes; a difference means the workflow's behaviour depends on
set/dict-of-hash order.

:func:`replay_under_another_hash_seed` does the same for ``duroxide-sim replay``: CI's process
may iterate a set in the very order production recorded, so the replay passes, while the next
production process (another seed) goes another way; the CLI replays a second time in a
subprocess under another hash seed and reports what only that one finds.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

__all__ = ["check_hash_seed_independence", "other_hash_seed", "replay_under_another_hash_seed"]


def _trace_hash(ref: str, seed: int, faults: str, hash_seed: int, cwd: str | None, extra: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    proc = subprocess.run(
        [sys.executable, "-m", "duroxide_sim", "reproduce", ref, "--seed", str(seed), "--faults", faults, *extra, "--json"],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"reproduce failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def check_hash_seed_independence(
    ref: str, seed: int, *, faults: str = "none", hash_seeds: tuple[int, int] = (0, 1), cwd: str | None = None,
    extra: tuple[str, ...] = (),
) -> str | None:
    """None when both hash seeds give the same trace; else a message with both hashes.
    ``extra``: more ``reproduce`` options (``--provider sqlite``, ``--nodes 1``)."""
    a = _trace_hash(ref, seed, faults, hash_seeds[0], cwd, extra)
    b = _trace_hash(ref, seed, faults, hash_seeds[1], cwd, extra)
    if a["trace_sha256"] == b["trace_sha256"]:
        return None
    return (
        f"{ref} seed {seed}: the trace depends on PYTHONHASHSEED ({hash_seeds[0]}: {a['trace_sha256'][:16]}, "
        f"{hash_seeds[1]}: {b['trace_sha256'][:16]}); look for iteration over sets or hash-ordered "
        f"collections in orchestration code. Reproduce: PYTHONHASHSEED={hash_seeds[1]} duroxide-sim reproduce "
        f"{shlex.quote(ref)} --seed {seed} --faults {shlex.quote(faults)}{''.join(' ' + x for x in extra)} --trace"
    )


def other_hash_seed() -> int:
    """A ``PYTHONHASHSEED`` that differs from this process's: the next value when it is set,
    else 0 (this process hashes with a random seed, which 0 almost surely is not)."""
    current = os.environ.get("PYTHONHASHSEED", "")
    if current.isdigit():
        return (int(current) + 1) % 4_294_967_296
    return 0


def replay_under_another_hash_seed(source: str, app_ref: str, *, latest: bool = False,
                                   cwd: str | None = None) -> tuple[int, list[dict]]:
    """``(seed, divergences)``: ``duroxide-sim replay SOURCE --app APP_REF --json`` run in a
    subprocess under :func:`other_hash_seed` (without the sandbox, whose reports do not depend
    on hashing). RuntimeError when that replay could not run (exit other than 0/1, or no JSON)."""
    seed = other_hash_seed()
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    cmd = [sys.executable, "-m", "duroxide_sim", "replay", source, "--app", app_ref, "--json", "--no-sandbox",
           "--no-hash-seed-check", *(["--latest"] if latest else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    try:
        rows = json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"its output is not the JSON list it should be ({exc})") from None
    if not isinstance(rows, list):
        raise RuntimeError("its output is not the JSON list it should be")
    return seed, rows
