"""Probe of the "reports what broke, with a timeline" promise, beyond tests/sim/test_timeline.py.

Planted-bug specs are written as a module into a temporary directory (so that their repro
lines resolve) and driven through the API and through ``duroxide-sim reproduce`` / ``show``:

1. the timeline of a failing seed points at the failure and its cause (crash after an
   activity's effect, then the same activity executed again);
2. hostile text (markup, quotes, entities, control characters, long strings, non-ASCII, lone
   surrogates) neither breaks nor injects into the page, and the page is offline;
3. same seed, same bytes (also across processes and hash seeds); a big run renders in seconds;
4. ``reproduce --trace`` / ``--json`` are parseable, stable and complete;
5. ``show`` on a production SQLite database is readable, correct and terminal-safe.

Written as a probe; fixed with it: an idempotency failure named no instance or step (it is now
placed on the instance and step of the re-execution); a same-seed rerun failure gave a trace
line number as its step; a lone surrogate or raw control characters reached the page (now
visible escapes); ``reproduce --json`` was corrupted by activities that print and lacked the
repro line and exact plan; ``reproduce`` printed messages' control characters raw; ``show``
cut every error to 80 characters (never saying why) and printed names/values raw.
"""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import time
import unicodedata
from html.parser import HTMLParser

import attrs
import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.cli import load_spec
from duroxide_sim.cli import main as cli_main
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation, Start
from duroxide_sim.sim.timeline import render_timeline, write_timeline

REPO = pathlib.Path(__file__).resolve().parents[2]

#: Markup, quotes, entities, a comment opener, terminal escapes, line separators, non-ASCII.
#: (NUL and lone surrogates are refused in ids and names; they go into log lines and messages.)
H = ("</script><script>alert(1)</script><img src=x onerror=alert(2)>\"'&amp;&lt;&#x3c;<!--"
     "\x07\x1b[31m\x1b]0;title\x07\u2028\u2029\x7f\x9b2J üñ✓😀")
BAD = H + "\x00\ud800"  # with NUL and a lone surrogate: only where free text is allowed

ONE_CRASH_AFTER_EFFECT = '{"script":[[1,"crash_after_effect"]]}'

SPEC_MODULE = textwrap.dedent('''
    """Planted-bug specs for tests/sim/test_timeline_probe.py (written into a temp dir)."""
    import itertools
    from duroxide_sim.sim.harness import SimSpec, Start

    H = {H!r}
    BAD = {BAD!r}
    HERE = __file__


    # --- a non-idempotent charge: a re-delivery charges the card twice ----------------------
    def _pay_setup(rt, world):
        @rt.register_activity("Billing::activity::charge_card")
        def charge_card(ctx, order):
            ctx.trace_info(f"charging order {{order}}")
            world.append("charges", order)  # BUG: no idempotency check
            return "charged"

        @rt.register_orchestration("Billing::orchestration::checkout")
        def checkout(ctx, order):
            ctx.set_custom_status("charging")
            return (yield ctx.schedule_activity("Billing::activity::charge_card", order))


    PAY = SimSpec(name="pay-non-idempotent", setup=_pay_setup, ref=f"{{HERE}}:PAY",
                  starts=[Start(instance=f"order-{{i}}", orchestration="Billing::orchestration::checkout", input=i)
                          for i in range(3)])


    # --- the same, with an activity that prints progress to stdout ----------------------------
    def _noisy_setup(rt, world):
        _pay_setup(rt, world)

        @rt.register_activity("Billing::activity::noisy")
        def noisy(ctx, order):
            print("progress: working on", order)
            return order

        @rt.register_orchestration("Billing::orchestration::noisy")
        def noisy_orch(ctx, order):
            yield ctx.schedule_activity("Billing::activity::noisy", order)
            return (yield ctx.schedule_activity("Billing::activity::charge_card", order))


    NOISY = SimSpec(name="noisy", setup=_noisy_setup, ref=f"{{HERE}}:NOISY",
                    starts=[Start(instance=f"n-{{i}}", orchestration="Billing::orchestration::noisy", input=i)
                            for i in range(2)])


    # --- orchestration code that is not deterministic (a module-level counter) ---------------
    CALLS = itertools.count()


    def _flaky_setup(rt, world):
        @rt.register_activity("Flaky::activity::step")
        def step(ctx, x):
            return x

        @rt.register_activity("Flaky::activity::other")
        def other(ctx, x):
            return x

        @rt.register_orchestration("Flaky::orchestration::main")
        def main(ctx, _):
            yield ctx.schedule_activity("Flaky::activity::step", 1)
            yield ctx.schedule_timer(100)
            name = "Flaky::activity::step" if next(CALLS) % 2 == 0 else "Flaky::activity::other"  # BUG
            yield ctx.schedule_activity(name, 2)
            return "done"


    FLAKY = SimSpec(name="flaky", setup=_flaky_setup, ref=f"{{HERE}}:FLAKY",
                    starts=[Start(instance="fa", orchestration="Flaky::orchestration::main"),
                            Start(instance="fb", orchestration="Flaky::orchestration::main")])


    # --- an activity whose result leaks across runs of the same seed (a module-level counter) --
    LEAKED = {{"n": 0}}


    def _leak_setup(rt, world):
        @rt.register_activity("Leak::activity::count")
        def count(ctx, _):
            LEAKED["n"] += 1  # BUG: survives across runs of the same seed
            return LEAKED["n"]

        @rt.register_orchestration("Leak::orchestration::main")
        def main(ctx, _):
            return (yield ctx.schedule_activity("Leak::activity::count", None))


    LEAK = SimSpec(name="leak", setup=_leak_setup, ref=f"{{HERE}}:LEAK",
                   starts=[Start(instance="leaky", orchestration="Leak::orchestration::main")])


    # --- hostile text everywhere: ids, names, payloads, errors, logs, status, messages --------
    def _hostile_setup(rt, world):
        act = "Act" + H

        @rt.register_activity(act)
        def hostile_act(ctx, x):
            ctx.trace_info("activity log " + BAD)
            world.append("k" + H, x)  # BUG: not idempotent (an idempotency failure naming all this)
            if x == "fail":
                raise ValueError("boom " + BAD)
            return {{"out": H, "long": "y" * 20_000}}

        @rt.register_orchestration("Orch" + H)
        def hostile_orch(ctx, x):
            ctx.trace_warn("orch log " + BAD)
            ctx.set_custom_status("status " + H)
            ctx.set_kv_value("key" + H, "value" + H)
            return (yield ctx.schedule_activity(act, x))


    def hostile_invariant(result):
        return "invariant broke " + H + "\\x00"


    HOSTILE = SimSpec(name="hostile " + H, setup=_hostile_setup, ref=f"{{HERE}}:HOSTILE",
                      starts=[Start(instance="i" + H, orchestration="Orch" + H, input=H + "x" * 5_000),
                              Start(instance="f" + H, orchestration="Orch" + H, input="fail")],
                      invariants=[hostile_invariant])


    # --- a user invariant whose message holds a lone surrogate (a file name decoded with
    # surrogateescape, say) ------------------------------------------------------------------
    def surrogate_invariant(result):
        return "bad file name " + "report-\\udcff.csv"


    SURROGATE = SimSpec(name="surrogate", setup=_pay_setup, ref=f"{{HERE}}:SURROGATE",
                        starts=[Start(instance="s-0", orchestration="Billing::orchestration::checkout", input=0)],
                        invariants=[surrogate_invariant])


    # --- an invariant whose message carries terminal escapes -----------------------------------
    def terminal_invariant(result):
        return "world looks wrong: " + H


    TERMINAL = SimSpec(name="terminal", setup=_pay_setup, ref=f"{{HERE}}:TERMINAL",
                       starts=[Start(instance="t-0", orchestration="Billing::orchestration::checkout", input=0)],
                       invariants=[terminal_invariant])
''').format(H=H, BAD=BAD)

ALLOWED_TAGS = {"html", "head", "meta", "title", "script", "style", "body", "div", "header", "h1", "h2", "h3", "dl", "dt", "dd",
                "code", "ol", "li", "a", "span", "button", "label", "input", "output", "i", "section", "p", "pre"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    """The planted-bug module, written to a temp dir and loaded the way the CLI loads it."""
    path = tmp_path_factory.mktemp("probe_specs") / "probe_specs.py"
    path.write_text(SPEC_MODULE, encoding="utf-8")

    class Mod:
        file = path
        PAY = load_spec(f"{path}:PAY")
        NOISY = load_spec(f"{path}:NOISY")
        FLAKY = load_spec(f"{path}:FLAKY")
        HOSTILE = load_spec(f"{path}:HOSTILE")
        SURROGATE = load_spec(f"{path}:SURROGATE")
        TERMINAL = load_spec(f"{path}:TERMINAL")
        LEAK = load_spec(f"{path}:LEAK")

    return Mod


def _records(result) -> list[dict]:
    return [json.loads(line) for line in result.trace]


class _Page(HTMLParser):
    """Start tags, attributes, text, and each lane's label/markers as a browser tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.lane_names: list[str] = []  # the text of every <span class="nm">
        self.markers: dict[str, list[dict[str, str | None]]] = {}  # lane -> its <i class="ev ..."> attrs
        self._lane: str | None = None
        self._in_nm = False
        self._raw: str | None = None

    def handle_starttag(self, tag, attributes):
        self.tags.append(tag)
        self.attrs.extend(attributes)
        a = dict(attributes)
        if tag == "div" and (a.get("data-lane") is not None):
            self._lane = a["data-lane"]
            self.markers.setdefault(self._lane, [])
        if tag == "i" and "ev" in (a.get("class") or "").split() and self._lane is not None:
            self.markers[self._lane].append(a)
        if tag == "span" and a.get("class") == "nm":
            self._in_nm = True
            self.lane_names.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_nm = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_nm:
            self.lane_names[-1] += data


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _data_block(page: str) -> dict:
    """The JSON data block, cut where a browser's tokenizer ends it (the first ``</script``)."""
    start = page.index('<script type="application/json" id="tl-data">') + len('<script type="application/json" id="tl-data">')
    end = page.lower().index("</script", start)
    return json.loads(page[start:end])


def _controls(text: str, allowed: str = "") -> list[str]:
    """Unicode control characters (category Cc: C0, DEL, C1) not in ``allowed``."""
    return sorted({repr(c) for c in text if unicodedata.category(c) == "Cc" and c not in allowed})


def _x(marker: dict) -> int:
    return int(re.search(r"--x:(\d+)", marker["style"]).group(1))


# --------------------------------------------------------------------------------------------
# 1. the timeline of a failing seed points at the failure and its cause
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pay(mod):
    sim = Simulation(mod.PAY, 3, FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT))
    result = run_and_check(sim)
    page = render_timeline(result, spec_name=sim.spec.name, repro=sim.repro_command())
    return sim, result, page


def _reexecuted(result) -> tuple[str, int, list[int]]:
    """(instance, activity id, trace indexes of its work_exec records) of the activity run twice."""
    execs: dict[tuple[str, int], list[int]] = {}
    for i, rec in enumerate(_records(result)):
        if rec["op"] == "work_exec":
            execs.setdefault((rec["instance"], rec["id"]), []).append(i)
    twice = [(k, v) for k, v in execs.items() if len(v) >= 2]
    assert len(twice) == 1, execs
    (inst, ident), indexes = twice[0]
    return inst, ident, indexes


def test_crash_after_effect_and_reexecution_are_visible_in_the_lanes(pay) -> None:
    """The cause of the failure can be read off the page: the activity ran, the fault fired and
    the node crashed right there, the node was down, the same activity id ran again later."""
    sim, result, page = pay
    assert [f.checker for f in result.failures] == ["idempotency"], [f.render() for f in result.failures]
    assert "Billing::activity::charge_card" in result.failures[0].message
    recs = _records(result)
    inst, ident, execs = _reexecuted(result)
    first, second = execs[0], execs[1]
    fault = first + 1
    crash = first + 2
    assert recs[fault]["op"] == "fault" and recs[fault]["kind"] == "crash_after_effect"
    assert recs[crash]["op"] == "crash" and recs[crash]["node"] == recs[first]["node"]
    assert recs[first]["step"] == recs[fault]["step"] == recs[crash]["step"]

    parsed = _parse(page)
    in_lane = {m["data-i"] for m in parsed.markers[f"instance:{inst}"] if m.get("data-i")}
    assert {str(first), str(second)} <= in_lane  # both executions on the instance's lane
    node_lane = parsed.markers[f"node:{recs[first]['node']}"]
    assert str(crash) in {m.get("data-i") for m in node_lane}  # the crash on the node that ran it
    glob = {m.get("data-i"): m for m in parsed.markers["global"]}
    assert str(fault) in glob and "k-crash_after_effect" in glob[str(fault)]["class"]
    assert glob[str(fault)]["data-step"] == str(recs[first]["step"])
    # the fault column sits right after the first execution and before the re-execution
    xs = {m["data-i"]: _x(m) for lane in parsed.markers.values() for m in lane if m.get("data-i")}
    assert xs[str(first)] < xs[str(fault)] < xs[str(second)]
    # a guide across every lane at the fault and the crash; the node shown down until its restart
    assert f'<i class="vl op-fault" style="--x:{xs[str(fault)]}">' in page
    assert f'<i class="vl op-crash" style="--x:{xs[str(crash)]}">' in page
    node_row = re.search(rf'data-lane="node:{recs[first]["node"]}">(.*?)</div></div>', page, re.S).group(1)
    assert 'class="down"' in node_row and "1 crash<" in node_row
    # the header tells what was injected, and the plan
    assert "faults injected</dt><dd>crash_after_effect=1</dd>" in page
    assert html.escape(sim.plan.to_json()) in page
    # the activity's own log lines (one per execution) are on the instance's lane
    logs = [i for i, r in enumerate(recs) if r["op"] == "log" and r.get("instance") == inst]
    assert len(logs) >= 2 and {str(i) for i in logs} <= in_lane
    # the instance's history is in the data: every turn's events found and verified
    data = _data_block(page)
    turns = [data["turns"][str(i)] for i, r in enumerate(recs) if r["op"] == "orch_turn" and r["instance"] == inst and r["events"]]
    assert turns and all(t["found"] and t["verified"] for t in turns)
    kinds = [e["kind"] for t in turns for e in t["events"]]
    assert kinds[0] == "OrchestrationStarted" and "ActivityCompleted" in kinds and kinds[-1] == "OrchestrationCompleted"


def test_idempotency_failure_is_marked_on_the_instance_and_step_of_the_reexecution(pay) -> None:
    """The world's ledger knows which instance's activity wrote the duplicate effect: the
    failure should name it (and a step), so the page marks it on that instance's lane, at the
    re-execution, instead of only at the end of the run lane."""
    _, result, page = pay
    inst, _, execs = _reexecuted(result)
    failure = result.failures[0]
    second_step = _records(result)[execs[1]]["step"]
    assert failure.instance == inst, f"idempotency failure names no instance: {failure!r}"
    assert failure.step is not None and failure.step >= second_step, failure
    parsed = _parse(page)
    assert any(m.get("data-f") == "0" for m in parsed.markers[f"instance:{inst}"])


def test_stepped_failure_lands_in_its_instance_lane_right_after_its_step(mod) -> None:
    result = run_and_check(Simulation(mod.FLAKY, 0, None))
    stepped = [(k, f) for k, f in enumerate(result.failures) if f.step is not None and f.instance]
    assert stepped, [f.render() for f in result.failures]
    page = render_timeline(result)
    parsed = _parse(page)
    recs = _records(result)
    xs = {int(m["data-i"]): _x(m) for lane in parsed.markers.values() for m in lane if m.get("data-i")}
    for k, f in stepped:
        marks = [m for m in parsed.markers[f"instance:{f.instance}"] if m.get("data-f") == str(k)]
        assert len(marks) == 1 and marks[0]["data-step"] == str(f.step)
        fx = _x(marks[0])
        assert all(xs[i] < fx for i, r in enumerate(recs) if r["step"] <= f.step)
        assert all(xs[i] > fx for i, r in enumerate(recs) if r["step"] > f.step)
        assert f'data-goto-f="{k}">{f.checker}</a> [{html.escape(f.instance)}] at step {f.step}' in page


def test_same_seed_rerun_failure_points_at_the_differing_record(mod) -> None:
    """run_and_check(check_repeat=True): the failure says which trace line differs; its step
    (what the timeline anchors the failure on) must be that record's step, not its line index."""
    result = run_and_check(Simulation(mod.LEAK, 1, None), check_repeat=True)
    rerun = [f for f in result.failures if "same seed gave a different trace" in f.message]
    assert len(rerun) == 1, [f.render() for f in result.failures]
    line = int(re.search(r"at line (\d+)", rerun[0].message).group(1))
    differing = _records(result)[line]
    assert rerun[0].step == differing["step"], (rerun[0].step, differing)
    page = render_timeline(result)
    k = result.failures.index(rerun[0])
    parsed = _parse(page)
    fx = _x(next(m for m in parsed.markers["global"] if m.get("data-f") == str(k)))
    rx = _x(next(m for m in parsed.markers["global"] + parsed.markers["instance:leaky"] if m.get("data-i") == str(line)))
    assert fx > rx  # the failure column comes after the record that differs, not before it


# --------------------------------------------------------------------------------------------
# 2. hostile text: escaped, never markup; the page is offline
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(mod):
    sim = Simulation(mod.HOSTILE, 0, FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT))
    result = run_and_check(sim)
    page = render_timeline(result, spec_name=sim.spec.name, repro=sim.repro_command())
    return sim, result, page


def _shown(text: str) -> str:
    """How the page shows a text: control characters and lone surrogates as visible escapes."""
    from duroxide_sim.sim import timeline

    return timeline._UNSAFE.sub(timeline._unsafe_char, text)


def test_hostile_text_is_escaped_and_round_trips(hostile) -> None:
    sim, result, page = hostile
    checkers = {f.checker for f in result.failures}
    assert {"idempotency", "invariants"} <= checkers, [f.render() for f in result.failures]
    parsed = _parse(page)
    assert set(parsed.tags) <= ALLOWED_TAGS, set(parsed.tags) - ALLOWED_TAGS
    assert parsed.tags.count("script") == 3 and "img" not in parsed.tags
    assert page.lower().count("</script") == 3
    assert not [n for n, _ in parsed.attrs if n.startswith("on")]
    # every instance id shows as text in its lane label, exactly (control characters and lone
    # surrogates as their visible escapes: test_page_has_no_raw_control_characters)
    ids = {"i" + H, "f" + H}
    assert ids <= set(result.histories)
    assert {_shown(i) for i in ids} <= set(parsed.lane_names), parsed.lane_names
    assert {f"instance:{_shown(i)}" for i in ids} <= set(parsed.markers)
    # the title and header show the spec name as text
    assert f"<title>{_shown(html.escape(sim.spec.name))}" in page
    text = "".join(parsed.text)
    for f in result.failures:
        assert _shown(f.message) in text  # the message, as text in the failures list
    # the data block is intact: the trace, turn payloads and failures round-trip exactly
    data = _data_block(page)
    assert data["trace"] == list(result.trace)
    assert [f["message"] for f in data["failures"]] == [f.message for f in result.failures]
    payloads = json.dumps(data["turns"], ensure_ascii=False)
    assert "y" * 20_000 in payloads and "boom " in payloads
    assert any(json.loads(line).get("message") == "activity log " + BAD for line in data["trace"])


def test_page_is_offline(hostile, pay) -> None:
    for page in (hostile[2], pay[2]):
        parsed = _parse(page)
        refs = [v for k, v in parsed.attrs if k in ("src", "href", "action", "srcset", "data", "poster") and v]
        assert all(v == "#" for v in refs), refs
        assert not [v for k, v in parsed.attrs if k == "rel"]  # no <link rel=...>
        code = re.sub(r'<script type="application/json" id="tl-data">.*?</script>', "", page, flags=re.S)
        assert re.search(r"https?:|//[a-z0-9]|@import|url\(", code, re.I) is None


def test_page_has_no_raw_control_characters(hostile) -> None:
    """Control characters (C0 other than tab/LF/CR, DEL, C1) are HTML parse errors; NUL is
    dropped by browsers. Text from the run should reach the page escaped (as ``&#x1b;`` or
    similar), not raw."""
    page = hostile[2]
    assert _controls(page, allowed="\t\n\r") == []


def test_lone_surrogate_in_a_failure_message_does_not_break_the_timeline(mod, tmp_path) -> None:
    sim = Simulation(mod.SURROGATE, 0, None)
    result = run_and_check(sim)
    assert [f.checker for f in result.failures] == ["invariants"]
    out = write_timeline(result, tmp_path / "s.html", spec_name=sim.spec.name, repro=sim.repro_command())
    text = out.read_bytes().decode("utf-8")  # valid UTF-8
    assert "bad file name report-" in text and 'class="ev op-failure ck-invariants"' in text


def test_reproduce_timeline_with_a_lone_surrogate_in_a_message(mod, tmp_path, capsys) -> None:
    target = tmp_path / "cli.html"
    code = cli_main(["reproduce", f"{mod.file}:SURROGATE", "--seed", "0", "--faults", "none", "--timeline", str(target)])
    assert code == 1
    assert f"timeline: {target}" in capsys.readouterr().out
    target.read_bytes().decode("utf-8")


def test_very_long_strings_render_quickly_and_stay_bounded(mod) -> None:
    long_id = "L" * 16_000  # near the 16 KiB instance id limit
    starts = [Start(instance=long_id, orchestration="Billing::orchestration::checkout", input="p" * 300_000),
              Start(instance="ü" * 2_000 + H, orchestration="Billing::orchestration::checkout", input=1)]
    spec = attrs.evolve(mod.PAY, starts=starts)
    result = run_and_check(Simulation(spec, 1, FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT)))
    t0 = time.perf_counter()
    page = render_timeline(result)
    assert time.perf_counter() - t0 < 5
    parsed = _parse(page)
    assert {_shown(long_id), _shown("ü" * 2_000 + H)} <= set(parsed.lane_names)
    # (the spec logs the payload and the world holds it, so it is in log records and the
    # idempotency message too; still a few copies, not one per record)
    assert len(page.encode("utf-8")) < 8_000_000


# --------------------------------------------------------------------------------------------
# 3. deterministic bytes; a big run in seconds
# --------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_in_process(mod, hostile) -> None:
    sim, result, page = hostile
    again = run_and_check(Simulation(mod.HOSTILE, 0, FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT)))
    assert render_timeline(again, spec_name=sim.spec.name, repro=sim.repro_command()) == page


def _run_cli(args: list[str], hashseed: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="surrogateescape", timeout=120, check=False)


def test_same_seed_same_bytes_across_processes_and_hash_seeds(mod, tmp_path) -> None:
    """``reproduce --trace --timeline`` in two processes with different hash seeds: the same
    trace and the byte-identical page."""
    outs, pages = [], []
    for n, hashseed in enumerate(("0", "4242")):
        where = tmp_path / f"p{n}"
        where.mkdir()
        done = _run_cli(["reproduce", f"{mod.file}:PAY", "--seed", "3", "--faults", ONE_CRASH_AFTER_EFFECT, "--trace",
                         "--timeline", "t.html"], hashseed, where)
        assert done.returncode == 1, done.stderr[-2000:]
        outs.append(done.stdout)
        pages.append((where / "t.html").read_bytes())
    assert outs[0] == outs[1]
    assert pages[0] == pages[1]


def test_big_run_renders_in_seconds() -> None:
    from tests.sim import specs

    starts = [Start(instance=f"o{i}", orchestration="Orders::orchestration::order", input=i) for i in range(500)]
    spec = attrs.evolve(specs.ORDERS_NON_IDEMPOTENT, starts=starts)
    result = Simulation(spec, 1, FaultPlan.all(0.05)).run()
    t0 = time.perf_counter()
    page = render_timeline(result)
    seconds = time.perf_counter() - t0
    size = len(page.encode("utf-8"))
    print(f"500 instances: {result.steps} steps, {len(result.trace)} records, page {size / 1e6:.2f} MB in {seconds:.2f} s")
    assert seconds < 10 and size < 20_000_000
    assert page.count('data-lane="instance:') == len(result.histories) >= 1000  # + sub-orchestrations
    assert render_timeline(result) == page


def test_batch_fanout_planted_bug_timeline(tmp_path, capsys) -> None:
    import scenarios.batch_fanout as bf

    sim = Simulation(bf.NON_IDEMPOTENT_METERING, 0, FaultPlan.only("crash_after_effect"))
    result = run_and_check(sim)
    assert result.failures, "the planted metering bug must be caught"
    t0 = time.perf_counter()
    out = write_timeline(result, tmp_path / "bf.html", spec_name=sim.spec.name, repro=sim.repro_command())
    seconds = time.perf_counter() - t0
    size = out.stat().st_size
    print(f"batch_fanout/non-idempotent-metering: {result.steps} steps, page {size / 1e6:.2f} MB in {seconds:.2f} s")
    assert seconds < 10 and size < 20_000_000
    text = out.read_text(encoding="utf-8")
    assert "idempotency" in text and "batch::activity::process_batch" in text


# --------------------------------------------------------------------------------------------
# 4. reproduce --trace / --json
# --------------------------------------------------------------------------------------------


def test_reproduce_trace_is_the_canonical_trace_and_its_repro_line_reruns_it(mod, capsys) -> None:
    code = cli_main(["reproduce", f"{mod.file}:PAY", "--seed", "3", "--faults", ONE_CRASH_AFTER_EFFECT, "--trace"])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    direct = Simulation(mod.PAY, 3, FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT)).run()
    n = len(direct.trace)
    assert lines[:n] == list(direct.trace)
    recs = [json.loads(line) for line in lines[:n]]
    assert all({"step", "t", "op"} <= set(r) for r in recs)
    assert [r["step"] for r in recs] == sorted(r["step"] for r in recs)
    assert [r["t"] for r in recs] == sorted(r["t"] for r in recs)
    assert recs[0]["op"] == "begin" and recs[0]["seed"] == 3
    assert FaultPlan.from_json(recs[0]["plan"]) == FaultPlan.from_json(ONE_CRASH_AFTER_EFFECT)
    assert recs[-1]["op"] == "end"
    rest = lines[n:]
    assert rest[0].startswith(f"pay-non-idempotent seed 3: {direct.steps} steps") and direct.trace_hash[:16] in rest[0]
    assert any(line.startswith("idempotency [") and "(seed 3): " in line for line in rest)
    repro = [line for line in rest if line.startswith("reproduce: ")]
    assert len(repro) == 1
    argv = shlex.split(repro[0][len("reproduce: "):])
    assert argv[:2] == ["duroxide-sim", "reproduce"]
    assert cli_main([*argv[1:], "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["trace_sha256"] == direct.trace_hash


def test_reproduce_json_is_stable_and_complete(mod, capsys) -> None:
    args = ["reproduce", f"{mod.file}:FLAKY", "--seed", "0", "--faults", "none", "--json"]
    assert cli_main(args) == 1
    first = capsys.readouterr().out
    assert cli_main(args) == 1
    assert capsys.readouterr().out == first
    summary = json.loads(first)
    assert summary["seed"] == 0 and summary["spec"] == "flaky" and summary["plan"] == "no faults"
    assert summary["steps"] > 0 and len(summary["trace_sha256"]) == 64
    assert summary["failures"] and all(f["step"] is not None and f["instance"] for f in summary["failures"])
    assert all(0 < f["step"] <= summary["steps"] for f in summary["failures"])


def test_reproduce_json_carries_the_repro_line_of_a_failure(mod, capsys) -> None:
    """The text output ends every failure with its ``reproduce`` line (and ``run --json`` rows
    keep it in ``first_failure``); the JSON summary of a failing seed should carry it too, with
    the exact plan (``plan`` is only the human description: no until_ms / max_faults)."""
    plan = FaultPlan.from_json('{"script":[[1,"crash_after_effect"]],"until_ms":120000,"max_faults":5}')
    assert cli_main(["reproduce", f"{mod.file}:PAY", "--seed", "3", "--faults", plan.to_json(), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failures"] and summary["plan"] == plan.describe()
    texts = [v for v in summary.values() if isinstance(v, str)] + [str(v) for f in summary["failures"] for v in f.values()]
    assert any("duroxide-sim reproduce " in t and shlex.quote(plan.to_json()) in t for t in texts), summary


def test_reproduce_json_stdout_is_only_json_when_activities_print(mod, capsys) -> None:
    code = cli_main(["reproduce", f"{mod.file}:NOISY", "--seed", "0", "--faults", "none", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # the activity's print must not corrupt the JSON document
    assert summary["failures"] == []


def test_reproduce_text_output_escapes_control_characters(mod, capsys) -> None:
    code = cli_main(["reproduce", f"{mod.file}:TERMINAL", "--seed", "0", "--faults", "none"])
    assert code == 1
    out = capsys.readouterr().out
    assert "world looks wrong" in out
    assert _controls(out, allowed="\n") == []


# --------------------------------------------------------------------------------------------
# 5. show on a production SQLite database
# --------------------------------------------------------------------------------------------

EVIL = "\x1b[2J\x1b]0;pwned\x07\x9b31m\x7f\r\nFAKE LINE \"q\" <b>&amp; ü"


@pytest.fixture(scope="module")
def prod_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("prod") / "app.db"
    provider = SqliteProvider.open(str(db))
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=2))

    @rt.register_activity("Greet")
    def greet(ctx, name):
        return f"Hello, {name}!"

    @rt.register_activity("Charge")
    def charge(ctx, amount):
        raise ValueError(f"card declined for amount {amount}")

    @rt.register_orchestration("Child")
    def child(ctx, name):
        return (yield ctx.schedule_activity("Greet", name))

    @rt.register_orchestration("Parent")
    def parent(ctx, n):
        ctx.set_custom_status(f"round {n}")
        ctx.set_kv_value("rounds", str(n))
        greeting = yield ctx.schedule_sub_orchestration_with_id("Child", f"child-{n}", f"kid{n}")
        if n < 2:
            return (yield ctx.continue_as_new(n + 1))
        return greeting

    @rt.register_orchestration("Pay")
    def pay(ctx, amount):
        ctx.set_custom_status("charging")
        return (yield ctx.schedule_activity("Charge", amount))

    @rt.register_activity("Evil" + EVIL)
    def evil_act(ctx, x):
        raise ValueError("evil failure " + EVIL)

    @rt.register_orchestration("Evil" + EVIL)
    def evil(ctx, x):
        ctx.set_custom_status("status " + EVIL)
        ctx.set_kv_value("key" + EVIL, "value" + EVIL)
        ctx.trace_info("log " + EVIL)
        return (yield ctx.schedule_activity("Evil" + EVIL, x))

    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration("parent-1", "Parent", 0)
        client.start_orchestration("pay-1", "Pay", 42)
        client.start_orchestration("evil" + EVIL, "Evil" + EVIL, EVIL)
        done = {i: client.wait_for_orchestration(i, 20_000) for i in ("parent-1", "pay-1", "evil" + EVIL)}
    finally:
        rt.shutdown()
    assert done["parent-1"].status == "Completed" and done["parent-1"].output == "Hello, kid2!"
    assert done["pay-1"].status == "Failed" and "card declined for amount 42" in done["pay-1"].error
    assert done["evil" + EVIL].status == "Failed"
    return db


def _show(capsys, db, *extra) -> tuple[int, str, str]:
    code = cli_main(["show", str(db), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_continue_as_new_sub_orchestrations_kv_and_custom_status(prod_db, capsys) -> None:
    code, out, _ = _show(capsys, prod_db, "--instance", "parent-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("parent-1  (Parent ")
    assert [line for line in lines if line.startswith(" execution")] == [" execution 1", " execution 2", " execution 3"]
    body = "\n".join(lines)
    assert body.count("  OrchestrationContinuedAsNew") == 2 and body.count("  OrchestrationCompleted") == 1
    for n in range(3):
        assert f'instance="child-{n}"' in body
        assert f'status="round {n}"' in body and f'value="{n}"' in body
    assert 'key="rounds"' in body and "SubOrchestrationCompleted <- #" in body
    assert "Hello, kid2!" in lines[-1] or "Hello, kid2!" in body.split(" execution 3")[1]
    code, out, _ = _show(capsys, prod_db, "--instance", "child-1")
    assert code == 0 and 'parent_instance="parent-1"' in out and "ActivityCompleted <- #" in out
    code, _, err = _show(capsys, prod_db, "--instance", "no-such")
    assert code == 2 and "no-such" in err


def test_show_failed_instance_says_why_it_failed(prod_db, capsys) -> None:
    code, out, _ = _show(capsys, prod_db, "--instance", "pay-1")
    assert code == 0
    assert "ActivityFailed <- #" in out and "OrchestrationFailed" in out
    assert "card declined for amount 42" in out, out


def test_show_hostile_text_is_terminal_safe(prod_db, capsys) -> None:
    code, out, _ = _show(capsys, prod_db, "--instance", "evil" + EVIL)
    assert code == 0
    assert _controls(out, allowed="\n") == [], out
    # one header line, then execution and event lines only: no injected line
    lines = out.splitlines()
    assert all(line.startswith((" execution", "  #")) for line in lines[1:]), lines
    assert "CustomStatusUpdated" in out and "KeyValueSet" in out


def test_show_all_instances_is_terminal_safe(prod_db, capsys) -> None:
    code, out, _ = _show(capsys, prod_db)
    assert code == 0
    assert _controls(out, allowed="\n") == []
    headers = [line for line in out.splitlines() if not line.startswith((" execution", "  #"))]
    assert len(headers) == 6, headers  # parent-1, child-0..2, pay-1, the evil one
