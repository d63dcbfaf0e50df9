"""Shared helpers for the end-to-end runtime tests (not a test module)."""

from __future__ import annotations

import json
import time
from typing import Any

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.sim import SequentialDriver, SequentialIds


def wait_until(pred: Any, timeout_s: float = 8.0) -> bool:
    """Poll ``pred`` every 10 ms on the monotonic clock until it is truthy (True) or ``timeout_s``
    passes (then one last look decides): for tests that drive a real, threaded runtime."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


#: Orchestration styles every applicable test runs in.
STYLES = ("generator", "async")


def pick(style: str, gen_fn: Any, async_fn: Any) -> Any:
    """The orchestration function of the requested style."""
    assert style in STYLES
    return gen_fn if style == "generator" else async_fn


def history(world: Any, instance: str, execution_id: int = 1) -> list[dict[str, Any]]:
    """The public history dicts of one execution."""
    return world.client.read_execution_history(instance, execution_id)


def kinds(world: Any, instance: str, execution_id: int = 1) -> list[str]:
    return [e["kind"] for e in history(world, instance, execution_id)]


def events_of(world: Any, instance: str, kind: str, execution_id: int = 1) -> list[dict[str, Any]]:
    """History dicts of one kind with ``data`` decoded to a dict."""
    out = []
    for e in history(world, instance, execution_id):
        if e["kind"] == kind:
            e = dict(e)
            e["data"] = json.loads(e["data"]) if e["data"] else {}
            out.append(e)
    return out


class SecondRuntime:
    """Another Runtime (fresh registry) over the same provider and simulated clock, with its own
    sequential driver and client: a new deployment of changed code."""

    def __init__(self, world: Any, options: RuntimeOptions | None = None, namespace: int = 1) -> None:
        self.runtime = Runtime(world.provider, options or RuntimeOptions(), clock=world.clock, ids=SequentialIds(namespace))
        self.driver = SequentialDriver(self.runtime, world.clock)
        self.client = Client(world.provider, clock=world.clock, sleep=self.driver.sleep)

    def run(self) -> None:
        self.driver.run_until_quiet()

    def result(self, instance: str, timeout_ms: int = 10**12) -> Any:
        return self.client.wait_for_orchestration(instance, timeout_ms)


class SqliteRig:
    """Runtimes, providers and clients on one SQLite file, all shut down / closed at teardown
    (bounded; a failure there is not the test's). ``make_options`` builds a runtime's default
    options."""

    def __init__(self, path: Any, make_options: Any = RuntimeOptions, shutdown_ms: int = 2_000) -> None:
        self.path = path
        self.make_options = make_options
        self.shutdown_ms = shutdown_ms
        self.providers: list[Any] = []
        self.runtimes: list[Runtime] = []

    def provider(self) -> Any:
        from duroxide_sim import SqliteProvider

        p = SqliteProvider.open(self.path)
        self.providers.append(p)
        return p

    def runtime(self, options: RuntimeOptions | None = None, provider: Any = None) -> Runtime:
        rt = Runtime(provider or self.provider(), options or self.make_options())
        self.runtimes.append(rt)
        return rt

    def client(self) -> Client:
        return Client(self.provider())

    def close(self) -> None:
        for rt in self.runtimes:
            try:
                rt.shutdown(self.shutdown_ms)
            except Exception:  # noqa: BLE001 - teardown
                pass
        for p in self.providers:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - teardown
                pass
