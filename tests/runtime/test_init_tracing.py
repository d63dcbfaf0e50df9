"""``init_tracing(log_file, log_level=None, log_format=None)``: duroxide-python's one-call log
file. A migrating service calls it at start-up; after the import rename it must still run and
put the runtime's lines (orchestration and activity ``trace_*`` with their instance fields,
runtime warnings) in the file, with the peer's first-call-wins and bad-path errors."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Iterator

import pytest

import duroxide_sim
from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider, init_tracing
from duroxide_sim.runtime import tracing


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    level = logging.getLogger("duroxide_sim").level
    tracing._reset_for_tests()
    yield
    tracing._reset_for_tests()
    logging.getLogger("duroxide_sim").setLevel(level)


def _run_hello(tmp_path: pathlib.Path, fail: bool = False) -> None:
    provider = SqliteProvider.open(tmp_path / "app.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))

    @rt.register_activity("Greet")
    def greet(ctx, name):
        ctx.trace_info(f"greeting {name}")
        if fail:
            raise ValueError("no greeting today")
        return f"Hello, {name}!"

    @rt.register_orchestration("Hello")
    def hello(ctx, name):
        ctx.trace_info(f"hello starts for {name}")
        try:
            return (yield ctx.schedule_activity("Greet", name))
        except Exception:
            ctx.trace_error("greet failed")
            return "sorry"

    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration("h1", "Hello", "Ada")
        assert client.wait_for_orchestration("h1", 10_000).status == "Completed"
    finally:
        rt.shutdown(2_000)
        provider.close()
    for h in logging.getLogger("duroxide_sim").handlers:
        h.flush()


def test_exported_like_the_peer_and_callable() -> None:
    assert "init_tracing" in duroxide_sim.__all__ and callable(init_tracing)


def test_compact_lines_carry_the_trace_messages_and_their_fields(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "duroxide.log"
    init_tracing(str(log), log_level="info")
    _run_hello(tmp_path)
    text = log.read_text(encoding="utf-8")
    orch = next(line for line in text.splitlines() if "hello starts for Ada" in line)
    assert "INFO duroxide_sim.orchestration:" in orch and "instance_id=h1" in orch and "orchestration_name=Hello" in orch
    act = next(line for line in text.splitlines() if "greeting Ada" in line)
    assert "duroxide_sim.activity" in act and "activity_name=Greet" in act and "instance_id=h1" in act
    assert orch[:4].isdigit() and "T" in orch[:20] and orch.split()[0].endswith("Z")  # UTC timestamp first
    assert text.count("hello starts for Ada") == 1  # replays do not repeat it


def test_json_format_is_one_object_per_line(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "duroxide.jsonl"
    init_tracing(log, log_level="debug", log_format="json")
    _run_hello(tmp_path, fail=True)
    docs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert docs and all({"timestamp", "level", "target", "message"} <= set(d) for d in docs)
    err = next(d for d in docs if d["message"] == "greet failed")
    assert err["level"] == "ERROR" and err["target"] == "duroxide_sim.orchestration"
    assert err["fields"]["instance_id"] == "h1" and err["fields"]["execution_id"] == 1
    assert any(d["level"] == "WARNING" and d["target"].startswith("duroxide_sim") and "Greet" in d["message"]
               for d in docs), [d["message"] for d in docs]  # the activity failure warning


def test_level_filters_lines(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "warn.log"
    init_tracing(str(log), log_level="error")
    _run_hello(tmp_path, fail=True)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert any("greet failed" in line for line in lines)
    assert not any("greeting Ada" in line or "hello starts" in line for line in lines), lines


def test_first_call_wins_and_a_second_raises_like_the_peer(tmp_path: pathlib.Path) -> None:
    init_tracing(str(tmp_path / "one.log"))
    with pytest.raises(RuntimeError, match="Failed to init tracing") as info:
        init_tracing(str(tmp_path / "two.log"))
    assert "one.log" in str(info.value)
    assert not (tmp_path / "two.log").exists()


def test_unopenable_path_raises_a_clear_error_and_installs_nothing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError, match="Failed to open log file") as info:
        init_tracing(str(tmp_path / "no-such-dir" / "sub" / "x.log"))
    assert "no-such-dir" in str(info.value)
    init_tracing(str(tmp_path / "ok.log"))  # nothing was installed by the failed call


@pytest.mark.parametrize("args, error, text", [
    ((None,), TypeError, "log_file must be a path"),
    ((b"x.log",), TypeError, "log_file must be a path"),
    (("",), ValueError, "log_file is empty"),
    (("{tmp}/x.log", "loud"), ValueError, "unknown log_level 'loud'"),
    (("{tmp}/x.log", 3), TypeError, "log_level must be a string"),
    (("{tmp}/x.log", "info", "xml"), ValueError, "unknown log_format 'xml'"),
])
def test_bad_arguments_are_named(tmp_path: pathlib.Path, args: tuple, error: type, text: str) -> None:
    args = tuple(a.format(tmp=tmp_path) if isinstance(a, str) else a for a in args)
    with pytest.raises(error, match=text):
        init_tracing(*args)
    assert not (tmp_path / "x.log").exists()


@pytest.mark.parametrize("fmt", ["compact", "json"])
def test_trace_level_lines_are_labelled_trace(tmp_path: pathlib.Path, fmt: str) -> None:
    """log_level="trace" lets records at level 5 through; they are labelled TRACE (they showed
    as "Level 5"), without renaming level 5 for the rest of the process's logging."""
    log = tmp_path / "rt.log"
    init_tracing(str(log), log_level="trace", log_format=fmt)
    logging.getLogger("duroxide_sim.runtime").log(5, "deep detail %d", 7)
    logging.getLogger("duroxide_sim.runtime").debug("less deep")
    for h in logging.getLogger("duroxide_sim").handlers:
        h.flush()
    lines = log.read_text().splitlines()
    if fmt == "json":
        levels = [json.loads(line)["level"] for line in lines]
        assert levels == ["TRACE", "DEBUG"]
        assert json.loads(lines[0])["message"] == "deep detail 7"
    else:
        assert " TRACE duroxide_sim.runtime: deep detail 7" in lines[0]
        assert " DEBUG duroxide_sim.runtime: less deep" in lines[1]
    assert "Level 5" not in log.read_text()
    assert logging.getLevelName(5) == "Level 5"  # the process's level names are untouched
