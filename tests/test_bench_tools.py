"""The benchmark helpers that other tools build on: ``bench/sim_throughput.py``'s runtime-alone
measurement runs the W4-shaped work on every provider kind it names (``bench/instructions.py``
counts the instructions of each) and refuses one it does not know; ``bench/sql_statements.py``
counts a cell's statements during the workload only and leaves the provider class as it was."""

from __future__ import annotations

import pathlib
import sys
import tempfile
import types

import pytest

from duroxide_sim.providers.sqlite import SqliteProvider

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench():
    """The bench/ scripts as modules (bench/ is on sys.path only while they are imported and used)."""
    sys.path.insert(0, str(BENCH))
    try:
        import instructions
        import sim_throughput
        import sql_statements
        yield types.SimpleNamespace(st=sim_throughput, instructions=instructions, sql=sql_statements)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("kind", ["memory", "sqlite-memory", "sqlite-file"])
def test_runtime_alone_completes_the_w4_work_on_each_provider(bench, kind, tmp_path, monkeypatch):
    st = bench.st
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the file provider's directory goes here
    opened: list[str] = []
    real_open = SqliteProvider.open.__func__
    monkeypatch.setattr(SqliteProvider, "open", classmethod(
        lambda cls, path, **kw: (opened.append(str(path)), real_open(cls, path, **kw))[1]))
    out = st.bench_w4_runtime_alone(4, 1, kind)  # asserts inside that all 4 instances returned K
    assert out["ok"] is True and out["execs_per_s_median"] > 0
    assert out["mode"] == ("runtime alone" if kind == "memory" else f"runtime alone ({kind})")
    if kind == "sqlite-file":
        assert len(opened) == 1 and opened[0].startswith(str(tmp_path))
    else:
        assert opened == []
    assert list(tmp_path.iterdir()) == []  # the database file and its directory are removed


def test_runtime_alone_refuses_an_unknown_provider_kind(bench):
    st = bench.st
    with pytest.raises(ValueError, match="unknown provider kind 'postgres'; choose from memory, sqlite-memory"):
        st.bench_w4_runtime_alone(1, 1, "postgres")


def test_every_runtime_alone_provider_has_an_instruction_count_configuration(bench):
    st, instructions = bench.st, bench.instructions
    for kind in st.ALONE_PROVIDERS:
        call = "st.bench_w4_runtime_alone(n, 1)" if kind == "memory" else f"st.bench_w4_runtime_alone(n, 1, {kind!r})"
        assert call in instructions.CONFIGS.values()
    assert set(instructions.DEFAULT_CONFIGS) <= set(instructions.CONFIGS)


def test_statement_shapes_replace_literals_only(bench):
    shape = bench.sql.shape
    assert shape("SELECT 'it''s', 12, -3.5 FROM t1 WHERE  x = 'w5-00001'\n AND y >= -2305843009213693952") == (
        "SELECT ?, N, N FROM t1 WHERE x = ? AND y >= N")


def test_statement_counts_cover_the_workload_and_leave_the_provider_as_it_was(bench, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = SqliteProvider.__dict__["_connect"]
    assert bench.sql.main(["--workload", "W2", "--n", "3", "--provider", "sqlite-file", "--limit", "1000"]) == 0
    assert SqliteProvider.__dict__["_connect"] is before  # no trace callback left on later connections
    out, err = capsys.readouterr()
    assert '"ok": true' in out
    header, *rows = err.splitlines()
    assert header.startswith("# W2 on sqlite-file: ") and " per activity " in header
    counted = {line.split("/activity  ", 1)[1]: int(line.split()[0].replace(",", "")) for line in rows}
    # Three activities and the start: every ack writes history rows, every write is a transaction.
    assert counted["BEGIN IMMEDIATE"] >= 4 and counted["COMMIT"] >= counted["BEGIN IMMEDIATE"]
    assert any(sql.startswith("INSERT INTO history ") for sql in counted)
    assert not any(sql.startswith(("CREATE ", "PRAGMA ")) for sql in counted)  # set-up is not counted
