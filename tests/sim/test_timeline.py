"""The HTML timeline of a simulated run: lanes, markers, failures, escaping, and a real browser.

The unit tests read the page as text (and through ``html.parser``). The browser tests open it
in headless Chromium: ``--dump-dom`` gives the DOM after the page's script ran, ``--screenshot``
keeps a picture under ``tests/artifacts/`` (git-ignored), and script errors are caught twice -
in Chromium's console log on stderr and in the page's own ``#js-errors`` box. A planted error
shows that both detectors really fire. Chromium is required: install it with
``apt-get install -y chromium`` (``.ci/run`` does this when it is missing).
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import attrs
import pytest

from duroxide_sim.cli import main as cli_main
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimResult, Simulation, Start
from duroxide_sim.sim.timeline import render_timeline, write_timeline
from tests.sim import specs

HOSTILE = '<img src=x onerror=alert(1)>"ü✓'
PLAN = '{"rates":{"crash_after_effect":0.3}}'
ARTIFACTS = pathlib.Path(__file__).resolve().parents[1] / "artifacts"
ALLOWED_TAGS = {"html", "head", "meta", "title", "script", "style", "body", "div", "header", "h1", "h2", "h3", "dl", "dt", "dd",
                "code", "ol", "li", "a", "span", "button", "label", "input", "output", "i", "section", "p", "pre"}


def _hostile_spec():
    """ORDERS_NON_IDEMPOTENT with its first instance renamed to markup, a quote and unicode."""
    starts = [Start(instance=HOSTILE if i == 0 else f"o{i}", orchestration="Orders::orchestration::order", input=i)
              for i in range(4)]
    return attrs.evolve(specs.ORDERS_NON_IDEMPOTENT, name="orders <non-idempotent> & \"quoted\"", starts=starts)


@pytest.fixture(scope="module")
def failing() -> tuple[Simulation, SimResult]:
    sim = Simulation(_hostile_spec(), 0, FaultPlan.from_json(PLAN))
    result = run_and_check(sim)
    assert result.failures, "the planted non-idempotent activity must break a property under crash_after_effect"
    return sim, result


@pytest.fixture(scope="module")
def page(failing) -> str:
    sim, result = failing
    return render_timeline(result, spec_name=sim.spec.name, repro=sim.repro_command())


def _records(result: SimResult) -> list[dict]:
    return [json.loads(line) for line in result.trace]


def _instances(result: SimResult) -> set[str]:
    return set(result.histories) | {r["instance"] for r in _records(result) if isinstance(r.get("instance"), str)}


def _data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="tl-data">(.*?)</script>', page, re.S)
    assert block is not None
    return json.loads(block.group(1))


class _Tags(HTMLParser):
    """Every start tag and attribute name, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.lanes: list[str] = []

    def handle_starttag(self, tag, attributes):
        self.tags.append(tag)
        self.attrs.extend(attributes)
        self.lanes.extend(v for k, v in attributes if k == "data-lane" and v is not None)


def _tags(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    parser.close()
    return parser


# --- the page as text -------------------------------------------------------------------------


def test_one_lane_per_instance_and_node(failing, page) -> None:
    _, result = failing
    instances = _instances(result)
    assert len(instances) >= 6  # four starts plus their sub-orchestrations
    assert page.count('data-lane="instance:') == len(instances)
    assert page.count('data-lane="node:') == 2
    assert 'data-lane="node:n0"' in page and 'data-lane="node:n1"' in page
    assert page.count('data-lane="global"') == 1
    parsed = _tags(page)
    assert sorted(v for v in parsed.lanes if v.startswith("instance:")) == sorted(f"instance:{i}" for i in instances)


def test_every_record_has_a_marker_in_its_lanes(failing, page) -> None:
    """Each trace record is drawn; activity work shows in the node lane and the instance lane."""
    _, result = failing
    lanes = re.findall(r'<div class="lane[^"]*" data-lane="([^"]*)">(.*?)</div></div>', page, re.S)
    by_lane = {html.unescape(name): body for name, body in lanes}
    for i, rec in enumerate(_records(result)):
        marker = f'data-i="{i}" data-step="{rec["step"]}"'
        assert marker in page, rec
        if rec["op"] in ("work_fetch", "work_exec", "work_ack", "orch_turn"):
            assert marker in by_lane[f"node:{rec['node']}"], rec
            assert marker in by_lane[f"instance:{rec['instance']}"], rec


def test_faults_crashes_and_restarts_are_marked(failing, page) -> None:
    _, result = failing
    recs = _records(result)
    kinds = {r["op"] for r in recs}
    assert {"fault", "crash", "restart"} <= kinds
    for i, rec in enumerate(recs):
        if rec["op"] in ("fault", "crash", "restart", "lock_expiry"):
            assert re.search(rf'<i class="ev op-{rec["op"]}[^"]*" data-i="{i}" data-step="{rec["step"]}"', page), rec
    n_guides = sum(1 for r in recs if r["op"] in ("fault", "crash", "restart", "lock_expiry"))
    assert page.count('<i class="vl op-') == n_guides + len(result.failures)
    assert 'class="down"' in page  # a crashed node shows as down until its restart


def test_failures_are_marked_with_checker_and_repro(failing, page) -> None:
    sim, result = failing
    assert "1 failure" in page or f"{len(result.failures)} failures" in page
    for k, f in enumerate(result.failures):
        step = f.step if f.step is not None else _records(result)[-1]["step"]
        assert f'class="ev op-failure ck-{f.checker}" data-f="{k}" data-step="{step}"' in page
        assert f'<span class="fl">{f.checker}</span>' in page
        assert html.escape(f.repro) in page
        assert f.repro.startswith("duroxide-sim reproduce ")
    assert html.escape(sim.repro_command()) in page
    assert f"seed</dt><dd>{result.seed}</dd>" in page
    assert html.escape(sim.plan.describe()) in page and html.escape(sim.plan.to_json()) in page
    assert _data(page)["failures"][0]["repro"] == result.failures[0].repro


def test_hostile_instance_id_and_spec_name_are_escaped(failing, page) -> None:
    sim, result = failing
    assert HOSTILE in result.histories
    assert "<img" not in page.lower()  # the id survives only as escaped text (&lt;img, \u003cimg)
    assert html.escape(HOSTILE) in page  # shown as text in its lane label
    assert f'data-lane="instance:{html.escape(HOSTILE)}"' in page
    assert html.escape(sim.spec.name) in page and sim.spec.name not in page
    parsed = _tags(page)
    assert set(parsed.tags) <= ALLOWED_TAGS, set(parsed.tags) - ALLOWED_TAGS
    assert not [name for name, _ in parsed.attrs if name.startswith("on")], "no inline event handlers at all"
    assert not [v for k, v in parsed.attrs if k == "src"], "no external scripts or images"
    assert re.search(r"(https?:)?//[a-z]", re.sub(r"<script type=\"application/json\".*?</script>", "", page, flags=re.S)) is None
    # The data block round-trips the hostile id exactly.
    assert any(json.loads(line).get("instance") == HOSTILE for line in _data(page)["trace"])


def test_turn_payload_carries_the_history_events_it_wrote(failing, page) -> None:
    _, result = failing
    turns = _data(page)["turns"]
    recs = _records(result)
    checked = 0
    for i, rec in enumerate(recs):
        if rec["op"] != "orch_turn" or not rec["events"]:
            continue
        entry = turns[str(i)]
        assert entry["found"] and entry["verified"], (rec, entry)
        assert [f"{e['event_id']}:{e['kind']}" for e in entry["events"]] == rec["events"]
        assert all(e["instance_id"] == rec["instance"] for e in entry["events"] if "instance_id" in e)
        checked += 1
    assert checked >= 10


def test_render_is_deterministic(failing, page) -> None:
    sim, result = failing
    assert render_timeline(result, spec_name=sim.spec.name, repro=sim.repro_command()) == page
    again = run_and_check(Simulation(_hostile_spec(), 0, FaultPlan.from_json(PLAN)))
    assert render_timeline(again, spec_name=sim.spec.name, repro=sim.repro_command()) == page


def test_passing_run_says_so() -> None:
    result = run_and_check(Simulation(specs.ORDERS_OK, 1, None))
    page = render_timeline(result, title="ok run")
    assert result.ok and "all properties hold" in page and "<title>ok run</title>" in page
    assert 'class="ev op-failure' not in page


def test_a_2000_step_run_stays_small() -> None:
    starts = [Start(instance=f"o{i}", orchestration="Orders::orchestration::order", input=i) for i in range(64)]
    result = Simulation(attrs.evolve(specs.ORDERS_OK, starts=starts), 1, FaultPlan.all(0.05)).run()
    assert result.steps >= 2000
    page = render_timeline(result)
    assert len(page.encode("utf-8")) < 3_000_000
    assert page.count('data-lane="instance:') == len(_instances(result))
    assert page.count(' data-i="') >= len(result.trace)


def test_write_timeline_and_cli(tmp_path, capsys, failing, page) -> None:
    out = write_timeline(failing[1], tmp_path / "sub" / "t.html", spec_name=failing[0].spec.name, repro=failing[0].repro_command())
    assert out.read_text(encoding="utf-8") == page
    target = tmp_path / "cli.html"
    code = cli_main(["reproduce", specs.ORDERS_NON_IDEMPOTENT.ref, "--seed", "0", "--faults", PLAN, "--timeline", str(target)])
    assert code == 1
    printed = capsys.readouterr().out
    assert f"timeline: {target}" in printed
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "orders-non-idempotent" in text and "idempotency" in text
    assert text.count('data-lane="instance:') >= 6


# --- the page in a browser --------------------------------------------------------------------


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and pathlib.Path(candidate).exists():
            return candidate
    pytest.fail("chromium is not installed: run `apt-get install -y chromium` (.ci/run does this when it is missing)")


def _browse(tmp_path: pathlib.Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _script_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(w in line for w in ("Uncaught", "SyntaxError", "ReferenceError"))]


def _js_errors_box(dom: str) -> str:
    m = re.search(r'<div id="js-errors">(.*?)</div>', dom, re.S)
    assert m is not None, "the #js-errors element is missing from the DOM"
    return m.group(1)


def test_browser_renders_lanes_without_script_errors(tmp_path, failing, page) -> None:
    _, result = failing
    path = tmp_path / "timeline.html"
    path.write_text(page, encoding="utf-8")
    recs = _records(result)
    turn_step = next(r["step"] for r in recs if r["op"] == "orch_turn" and r["events"] and r["instance"] == HOSTILE)
    done = _browse(tmp_path, f"{path.as_uri()}#step={turn_step}", "--dump-dom")
    dom = done.stdout
    assert _script_errors(done.stderr) == []
    assert _js_errors_box(dom) == ""
    assert re.search(r'<output id="tl-status"[^>]*data-ready="1"', dom), "the page script did not finish"
    assert dom.count('data-lane="instance:') == len(_instances(result))
    assert dom.count('data-lane="node:') == 2
    parsed = _tags(dom)
    assert "img" not in parsed.tags and not [n for n, _ in parsed.attrs if n.startswith("on")]
    assert sorted(v for v in parsed.lanes if v.startswith("instance:")) == sorted(f"instance:{i}" for i in _instances(result))
    # #step=N selected that turn: the details panel shows its record and the history it wrote.
    details = re.search(r'<section id="details">(.*?)</section>', dom, re.S)
    assert details is not None
    shown = html.unescape(details.group(1))
    assert f"step {turn_step} · orch_turn" in shown
    assert "history events written (execution 1" in shown and '"kind": "OrchestrationStarted"' in shown
    assert "matches the final history" in shown
    assert 'class="sel-ring"' in dom


def test_browser_screenshot(tmp_path, failing, page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "timeline.html"
    path.write_text(page, encoding="utf-8")
    shot = ARTIFACTS / "timeline.png"
    shot.unlink(missing_ok=True)
    done = _browse(tmp_path, path.as_uri(), f"--screenshot={shot}", "--window-size=1600,900")
    assert _script_errors(done.stderr) == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1600, 900)
    assert len(data) > 30_000  # lanes full of markers, not a blank page


def test_browser_error_detectors_fire_on_a_planted_error(tmp_path, page) -> None:
    """Control: the two checks above would notice a broken script."""
    broken = page.replace("</body>", "<script>window.noSuchFunctionInTheTimeline();</script></body>")
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    done = _browse(tmp_path, path.as_uri(), "--dump-dom")
    assert "noSuchFunctionInTheTimeline" in _js_errors_box(done.stdout)
    assert any("noSuchFunctionInTheTimeline" in line for line in _script_errors(done.stderr)), done.stderr[-2000:]
