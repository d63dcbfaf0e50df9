"""A scenario author's journeys through ``duroxide-sim run`` / ``explore`` / ``reproduce``.

The user writes their OWN scenario directory (in ``tmp_path``), following scenarios/README.md:
modules defining ``SPEC`` (a SimSpec with ``ref``), ``VARIANTS`` (planted bugs, each also bound
to a module-level name), a ``Names`` style, idempotent activities, retry policies, ``_``-prefixed
helpers skipped by the CLI. Three realistic workflows:

* ``billing``      - subscription billing: charge per period (retries with back-off), a durable
                     timer between periods raced with a customer's ``cancel`` event, dunning on a
                     declined card, and one subscription cancelled by the operator
                     (``Signal(kind="cancel")``). Planted bug ``double-charge``: the charge is not
                     idempotent (a re-delivery bills twice) -> idempotency checker under faults.
* ``doc_approval`` - document approval: a reviewer's decision (human event) or, after a
                     deadline timer, escalation to a manager with its own deadline.
* ``fanout``       - fan-out/fan-in: reserve every part of a build in parallel (``ctx.all``); one
                     part is out of stock -> release (compensate) the others. Planted bug
                     ``partial-compensation``: only the first reserved part is released ->
                     invariant broken even without faults.

Then the author mistakes: a setup that registers nothing, a variant that starts an
unregistered orchestration, a signal for an instance never started, invariants returning
non-strings or raising, an eternal timer loop, a scenario that prints a lot, two specs with one
name, non-Python files, a subdirectory, a flat directory with its ``_common.py`` helper.

Each test asserts what README.md / scenarios/README.md say. Run with
``python -m pytest tests/testing/test_scenario_author_journeys.py -q``.

Found by this file and fixed (each test failed before): a flat scenario directory's pasted
reproduce line could not import its ``_common`` helper from another directory, and two
directories' ``_common`` got mixed up in one process; two specs with one name were run as one
(the shrinker used the wrong spec; now a load error naming both files); ``--seeds`` past
sys.maxsize ended in a traceback; ``--faults crash`` did not say what is accepted.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import uuid

import pytest

from duroxide_sim.cli import main as cli


# --------------------------------------------------------------------------------------------------
# The user's scenario package
# --------------------------------------------------------------------------------------------------

HELPERS = textwrap.dedent('''
    """Shared helpers of my scenarios (``_``-prefixed: not a scenario, skipped by the CLI)."""


    def poisoned(result, instance):
        """Failed by poison (the fault budget used up): exempt from business invariants."""
        st = result.statuses.get(instance)
        return st is not None and st.status == "Failed" and str(st.error).startswith("poison:")


    def outcome(result, instance):
        st = result.statuses.get(instance)
        if st is None:
            return ("NotFound", None)
        return (st.status, st.output if st.status == "Completed" else st.error)
''')

BILLING = textwrap.dedent('''
    """Subscription billing: charge every period until cancelled; a declined card ends in dunning."""
    from duroxide_sim import Backoff, RetryPolicy
    from duroxide_sim.sim.harness import Signal, SimSpec, Start

    from ._helpers import outcome, poisoned


    class Names:
        SUBSCRIPTION = "billing::orchestration::subscription"
        CHARGE = "billing::activity::charge"
        NOTIFY = "billing::activity::notify"
        CANCEL = "cancel"


    DAY = 24 * 3600 * 1000
    RETRY = RetryPolicy(max_attempts=3, backoff=Backoff("exponential", base_ms=1_000))
    SUBS = {"sub-1": 3, "sub-2": 5, "sub-3": 3, "sub-4": 6}    # subscription -> billing cycles
    EXPECTED = {
        "sub-1": ("Completed", {"status": "completed", "billed": 3}),
        "sub-2": ("Completed", {"status": "cancelled", "billed": 3}),   # the customer cancels at 2.5 days
        "sub-3": ("Completed", {"status": "dunning", "billed": 0}),     # card declined on every attempt
        "sub-4": ("Failed", "canceled: fraud"),                          # the operator cancels the instance
    }


    def make_setup(double_charge=False):
        def setup(rt, world):
            @rt.register_activity(Names.CHARGE)
            def charge(ctx, req):
                sub, cycle, amount = req["sub"], req["cycle"], req["amount"]
                if sub == "sub-3":
                    raise ValueError("card declined")
                if double_charge:                       # BUG: bills on every delivery
                    world.incr("revenue", amount)
                    world.append(f"charges:{sub}", cycle)
                elif world.put_if_absent(f"charge:{sub}:{cycle}", amount):
                    world.incr("revenue", amount)
                    world.append(f"charges:{sub}", cycle)
                return {"charged": amount}

            @rt.register_activity(Names.NOTIFY)
            def notify(ctx, req):
                world.put_if_absent(f"mail:{req['sub']}:{req['kind']}", True)

            @rt.register_orchestration(Names.SUBSCRIPTION)
            def subscription(ctx, sub):
                billed = 0
                for cycle in range(sub["cycles"]):
                    try:
                        yield ctx.schedule_activity_with_retry(
                            Names.CHARGE, {"sub": sub["id"], "cycle": cycle, "amount": sub["amount"]}, RETRY)
                    except Exception as exc:
                        ctx.trace_warn(f"{sub['id']}: charge failed: {exc}")
                        yield ctx.schedule_activity(Names.NOTIFY, {"sub": sub["id"], "kind": "dunning"})
                        return {"status": "dunning", "billed": billed}
                    billed += 1
                    if cycle == sub["cycles"] - 1:
                        break
                    winner = yield ctx.select2(ctx.schedule_timer(sub["period_ms"]), ctx.wait_for_event(Names.CANCEL))
                    if winner.index() == 1:
                        yield ctx.schedule_activity(Names.NOTIFY, {"sub": sub["id"], "kind": "cancelled"})
                        return {"status": "cancelled", "billed": billed}
                return {"status": "completed", "billed": billed}
        return setup


    def revenue_matches_charges(result):
        charged = sum(len(result.world.get(f"charges:{s}", [])) * 100 for s in SUBS)
        if result.world.get("revenue", 0) != charged:
            return f"revenue {result.world.get('revenue', 0)} != charges recorded {charged}"
        return None


    def expected_outcomes(result):
        for sub, want in EXPECTED.items():
            inst = f"billing-{sub}"
            if poisoned(result, inst):
                continue
            got = outcome(result, inst)
            if got != want:
                return f"{inst}: expected {want!r}, got {got!r}"
        return None


    def make_spec(name, ref, double_charge=False):
        return SimSpec(
            name=name, setup=make_setup(double_charge), ref=ref,
            starts=[Start(instance=f"billing-{s}", orchestration=Names.SUBSCRIPTION,
                          input={"id": s, "cycles": n, "amount": 100, "period_ms": DAY}) for s, n in SUBS.items()],
            signals=[Signal(instance="billing-sub-2", name=Names.CANCEL, data={"by": "customer"}, at_ms=2 * DAY + DAY // 2),
                     Signal(instance="billing-sub-4", name="fraud", kind="cancel", at_ms=DAY + DAY // 2)],
            invariants=[revenue_matches_charges, expected_outcomes],
        )


    SPEC = make_spec("billing", __file__ + ":SPEC")

    # --- planted bugs ---
    DOUBLE_CHARGE = make_spec("billing/double-charge", __file__ + ":DOUBLE_CHARGE", double_charge=True)
    VARIANTS = {"double-charge": DOUBLE_CHARGE}
''')

DOC_APPROVAL = textwrap.dedent('''
    """Document approval: a reviewer's decision (human event) or, after a deadline, escalation."""
    from duroxide_sim.sim.harness import Signal, SimSpec, Start

    from ._helpers import outcome, poisoned


    class Names:
        REVIEW = "docs::orchestration::review"
        NOTIFY = "docs::activity::notify"
        PUBLISH = "docs::activity::publish"
        DECISION = "decision"


    HOUR = 3600 * 1000
    # Every decision is far from the fault window (10 min) and from every deadline: fault-transparent.
    DECISIONS = {"doc-1": [(1 * HOUR, {"approved": True, "by": "rita"})],
                 "doc-2": [(2 * HOUR, {"approved": False, "by": "rita"})],
                 "doc-3": [(6 * HOUR, {"approved": True, "by": "max"})],     # after the 4 h deadline: the manager
                 "doc-4": []}                                                 # nobody answers: auto-rejected
    EXPECTED = {"doc-1": {"doc": "doc-1", "state": "published", "by": "rita", "escalated": False},
                "doc-2": {"doc": "doc-2", "state": "rejected", "by": "rita", "escalated": False},
                "doc-3": {"doc": "doc-3", "state": "published", "by": "max", "escalated": True},
                "doc-4": {"doc": "doc-4", "state": "rejected", "by": "system", "escalated": True}}


    def setup(rt, world):
        @rt.register_activity(Names.NOTIFY)
        def notify(ctx, note):
            world.put_if_absent(f"mail:{note['doc']}:{note['to']}", note["kind"])

        @rt.register_activity(Names.PUBLISH)
        def publish(ctx, doc):
            world.put_if_absent(f"published:{doc}", True)

        @rt.register_orchestration(Names.REVIEW)
        def review(ctx, req):
            yield ctx.schedule_activity(Names.NOTIFY, {"doc": req["doc"], "to": "reviewer", "kind": "review"})
            first = yield ctx.select2(ctx.wait_for_event(Names.DECISION), ctx.schedule_timer(req["deadline_ms"]))
            escalated = first.index() == 1
            decision = first.value
            if escalated:
                ctx.trace_info(f"{req['doc']}: no decision in time, escalating")
                yield ctx.schedule_activity(Names.NOTIFY, {"doc": req["doc"], "to": "manager", "kind": "escalated"})
                second = yield ctx.select2(ctx.wait_for_event(Names.DECISION), ctx.schedule_timer(req["escalation_ms"]))
                decision = second.value if second.index() == 0 else {"approved": False, "by": "system"}
            if decision["approved"]:
                yield ctx.schedule_activity(Names.PUBLISH, req["doc"])
            return {"doc": req["doc"], "state": "published" if decision["approved"] else "rejected",
                    "by": decision["by"], "escalated": escalated}


    def expected_outcomes(result):
        for doc, want in EXPECTED.items():
            inst = f"review-{doc}"
            if poisoned(result, inst):
                continue
            if outcome(result, inst) != ("Completed", want):
                return f"{inst}: expected {want!r}, got {outcome(result, inst)!r}"
        return None


    def published_iff_approved(result):
        for doc, want in EXPECTED.items():
            if outcome(result, f"review-{doc}")[0] != "Completed":
                continue
            if result.world.exists(f"published:{doc}") != (want["state"] == "published"):
                return f"{doc}: published={result.world.exists(f'published:{doc}')} but state {want['state']}"
        return None


    SPEC = SimSpec(
        name="doc_approval", setup=setup, ref=__file__ + ":SPEC",
        starts=[Start(instance=f"review-{d}", orchestration=Names.REVIEW,
                      input={"doc": d, "deadline_ms": 4 * HOUR, "escalation_ms": 8 * HOUR}) for d in DECISIONS],
        signals=[Signal(instance=f"review-{d}", name=Names.DECISION, data=data, at_ms=at)
                 for d, evs in DECISIONS.items() for at, data in evs],
        invariants=[expected_outcomes, published_iff_approved],
    )
''')

FANOUT = textwrap.dedent('''
    """Fan-out/fan-in: reserve every part of a build in parallel; if one fails, release the others."""
    from duroxide_sim.sim.harness import SimSpec, Start

    from ._helpers import outcome


    class Names:
        BUILD = "factory::orchestration::build"
        RESERVE = "factory::activity::reserve_part"
        RELEASE = "factory::activity::release_part"


    BUILDS = {"b-1": ["bolt", "gear", "axle"], "b-2": ["bolt", "unobtainium", "gear", "axle"], "b-3": ["gear"]}


    def make_setup(release_all=True):
        def setup(rt, world):
            @rt.register_activity(Names.RESERVE)
            def reserve(ctx, req):
                if req["part"] == "unobtainium":
                    raise RuntimeError("out of stock: unobtainium")
                world.put_if_absent(f"reserved:{req['build']}:{req['part']}", True)
                return req["part"]

            @rt.register_activity(Names.RELEASE)
            def release(ctx, req):
                world.delete(f"reserved:{req['build']}:{req['part']}")

            @rt.register_orchestration(Names.BUILD)
            def build(ctx, req):
                results = yield ctx.all([ctx.schedule_activity(Names.RESERVE, {"build": req["id"], "part": p})
                                         for p in req["parts"]])
                got = [r["ok"] for r in results if "ok" in r]
                if len(got) == len(req["parts"]):
                    return {"build": req["id"], "state": "reserved", "parts": got}
                to_release = got if release_all else got[:1]   # BUG (variant): forgets all but the first
                yield ctx.all([ctx.schedule_activity(Names.RELEASE, {"build": req["id"], "part": p}) for p in to_release])
                return {"build": req["id"], "state": "compensated", "parts": []}
        return setup


    def no_stranded_reservations(result):
        for b, parts in BUILDS.items():
            status, out = outcome(result, f"build-{b}")
            if status != "Completed" or out["state"] != "compensated":
                continue
            left = [p for p in parts if result.world.exists(f"reserved:{b}:{p}")]
            if left:
                return f"build-{b} was compensated but still holds {left}"
        return None


    def make_spec(name, ref, release_all=True):
        return SimSpec(name=name, setup=make_setup(release_all), ref=ref,
                       starts=[Start(instance=f"build-{b}", orchestration=Names.BUILD, input={"id": b, "parts": ps},
                                     at_ms=i * 1000) for i, (b, ps) in enumerate(BUILDS.items())],
                       invariants=[no_stranded_reservations])


    SPEC = make_spec("fanout", __file__ + ":SPEC")

    # --- planted bugs ---
    PARTIAL_COMPENSATION = make_spec("fanout/partial-compensation", __file__ + ":PARTIAL_COMPENSATION",
                                     release_all=False)
    VARIANTS = {"partial-compensation": PARTIAL_COMPENSATION}
''')

#: A plan under which the double-charge bug shows on a few seeds only (the first is not seed 0).
SPARSE_CRASH = '{"rates": {"crash": 0.01}}'
#: A plan that crashes a process right after an activity's side effect, often.
CRASH_AFTER_EFFECT = '{"rates": {"crash_after_effect": 0.3}}'


def write_dir(where: pathlib.Path, files: dict[str, str | bytes]) -> pathlib.Path:
    where.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = where / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
    return where


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """My scenario package (a directory with ``__init__.py``, as scenarios/ is), plus the files
    a real repository keeps next to scenarios (notes, data): not Python, not scenarios."""
    root = tmp_path_factory.mktemp("journeys")
    return write_dir(root / f"acme_flows_{uuid.uuid4().hex[:8]}", {
        "__init__.py": "", "_helpers.py": HELPERS, "billing.py": BILLING, "doc_approval.py": DOC_APPROVAL,
        "fanout.py": FANOUT, "README.md": "# my scenarios\n", "notes.txt": "TODO: more scenarios\n",
        "fixtures.json": '{"plans": []}\n',
    })


def run_sub(args: list[str], cwd: pathlib.Path, *, hashseed: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if hashseed is not None:
        env["PYTHONHASHSEED"] = hashseed
    return subprocess.run([sys.executable, "-m", "duroxide_sim", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def paste(line: str, cwd: pathlib.Path, *, extra: str = "", hashseed: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a printed ``duroxide-sim reproduce ...`` line in a shell, as a user pasting it would."""
    script = f'duroxide-sim() {{ {shlex.quote(sys.executable)} -m duroxide_sim "$@"; }}\n{line} {extra}\n'
    env = dict(os.environ)
    if hashseed is not None:
        env["PYTHONHASHSEED"] = hashseed
    return subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def repro_of(failure: str) -> str:
    return next(ln for ln in failure.splitlines() if ln.startswith("reproduce: "))[len("reproduce: "):]


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


ROW_KEYS = {"scenario", "seeds", "faults_injected", "fault_kinds", "properties", "failures", "first_failure",
            "first_failing_seed", "unshrunk_failure", "budget_exhausted", "seconds"}


@pytest.fixture(scope="module")
def planted(flows: pathlib.Path) -> dict:
    """``run DIR --variants all --seeds 20``, as JSON and as the table (subprocesses)."""
    cwd = flows.parent
    as_json = run_sub(["run", flows.name, "--variants", "all", "--seeds", "20", "--json"], cwd=cwd)
    as_text = run_sub(["run", flows.name, "--variants", "all", "--seeds", "20"], cwd=cwd)
    return {"json": as_json, "text": as_text, "doc": json.loads(as_json.stdout), "cwd": cwd}


@pytest.fixture(scope="module")
def sparse(flows: pathlib.Path) -> dict:
    """The double-charge bug under a sparse crash plan, 40 seeds, not shrunk: the
    ground truth for the lowest failing seed."""
    proc = run_sub(["run", flows.name, "--variants", "double-charge", "--faults", SPARSE_CRASH, "--seeds", "40",
                    "--no-shrink", "--json"], cwd=flows.parent)
    assert proc.returncode == 1, proc.stderr[-2000:]
    row = json.loads(proc.stdout)["scenarios"][0]
    assert row["failures"] >= 1 and row["first_failing_seed"] > 0, row
    return row


# --------------------------------------------------------------------------------------------------
# run: correct scenarios, planted bugs, the report, the reproduce line
# --------------------------------------------------------------------------------------------------

def test_my_correct_scenarios_pass_under_faults_with_the_table_and_exit_0(flows: pathlib.Path) -> None:
    proc = run_sub(["run", flows.name, "--seeds", "20"], cwd=flows.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "duroxide-sim: scenario properties under faults" in out and "all properties held" in out
    for name in ("billing", "doc_approval", "fanout"):
        row = next((ln for ln in out.splitlines() if re.match(rf"│ {name}\s+│", ln)), None)
        assert row is not None, f"no table row for {name}: {out}"
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1] == "20" and cells[5] == "0", cells
        assert f"{name}: 20/20 seeds, 0 failing" in proc.stderr  # plain progress lines (not a terminal)
    # my own properties are listed next to the built-in checkers
    for prop in ("revenue_matches_charges", "expected_outcomes", "published_iff_approved", "no_stranded_reservations",
                 "determinism", "idempotency", "liveness"):
        assert prop in out
    # the variants are not run without --variants; the helper and the non-Python files are not scenarios
    assert "double-charge" not in out and "cannot load" not in proc.stderr and "_helpers" not in proc.stderr
    assert "README" not in proc.stderr and "notes" not in proc.stderr and "fixtures" not in proc.stderr


def test_planted_bugs_are_reported_with_scenario_checker_seed_shrunk_plan_and_repro(planted: dict) -> None:
    proc, doc = planted["text"], planted["doc"]
    assert proc.returncode == 1 and planted["json"].returncode == 1, proc.stderr[-2000:]
    rows = {r["scenario"]: r for r in doc["scenarios"]}
    assert sorted(rows) == ["billing/double-charge", "fanout/partial-compensation"]
    assert doc["ok"] is False and doc["load_errors"] == []
    out = proc.stdout
    # billing/double-charge: idempotency, named activity, the first failing seed, shrunk plan, repro line
    bill = rows["billing/double-charge"]
    seed = bill["first_failing_seed"]
    assert isinstance(seed, int) and 0 <= seed < 20
    assert f"FAILED billing/double-charge: {bill['failures']} of 20 seeds broke a property; first:" in out
    first = bill["first_failure"]
    assert re.match(rf"idempotency \[billing-sub-\d\] at step \d+ \(seed {seed}\): activity 'billing::activity::charge' "
                    r"changed the world when re-executed", first), first
    assert first.splitlines()[0] in out
    assert f"(shrunk: seed {seed}'s plan (" in first and "(shrunk: " in out
    assert bill["unshrunk_failure"] and f"(seed {seed})" in bill["unshrunk_failure"]
    repro = repro_of(first)
    assert repro.startswith("duroxide-sim reproduce ") and "billing.py:DOUBLE_CHARGE" in repro and f"--seed {seed} " in repro
    assert f"reproduce: {repro}" in out.splitlines()  # one line, ready to paste
    # fanout/partial-compensation: my invariant, failing without any fault (the shrinker says so)
    fan = rows["fanout/partial-compensation"]
    assert fan["first_failing_seed"] == 0 and fan["failures"] == 20
    assert fan["first_failure"].startswith("invariants (seed 0): no_stranded_reservations: build-b-2 was compensated "
                                           "but still holds ['gear', 'axle']")
    assert "it fails the same way with no faults at all" in fan["first_failure"]
    assert '"rates":{}' in repro_of(fan["first_failure"]) and '"script":[]' in repro_of(fan["first_failure"])
    assert "FAILED fanout/partial-compensation: 20 of 20 seeds broke a property" in out


def test_pasting_the_printed_reproduce_lines_reproduces_the_same_failures(planted: dict, tmp_path: pathlib.Path) -> None:
    """Shrunk and unshrunk repro lines, pasted into a shell from another directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for row in planted["doc"]["scenarios"]:
        for key in ("first_failure", "unshrunk_failure"):
            failure = row[key]
            pasted = paste(repro_of(failure), cwd=elsewhere)
            assert pasted.returncode == 1, (row["scenario"], key, pasted.stderr[-1500:])
            assert failure.splitlines()[0] in pasted.stdout, (row["scenario"], key, failure, pasted.stdout[-3000:])
            assert "Traceback" not in pasted.stderr


def test_reproduce_timeline_shows_the_failing_instance_the_faults_and_the_steps(flows: pathlib.Path,
                                                                              tmp_path: pathlib.Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The failure of a crash right after the charge's side effect: the timeline of its reproduce
    line must show the crashed node, the fault, the re-executed charge and the failing instance."""
    code, out, err = run_cli(["run", str(flows), "--variants", "double-charge", "--faults", CRASH_AFTER_EFFECT,
                              "--seeds", "10", "--json"], capsys)
    assert code == 1, err
    row = json.loads(out)["scenarios"][0]
    failure = row["first_failure"]
    instance = re.match(r"idempotency \[(billing-sub-\d)\]", failure).group(1)
    page_path = tmp_path / "runs" / "out.html"
    pasted = paste(repro_of(failure), cwd=tmp_path, extra=f"--timeline {shlex.quote(str(page_path))}")
    assert pasted.returncode == 1, pasted.stderr[-2000:]
    assert f"timeline: {page_path}" in pasted.stdout
    page = page_path.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    # self-contained: no external script, style sheet, image or font
    assert not re.search(r"<(script|img|iframe)[^>]*\bsrc=|<link\b|@import|https?://", page, re.I), "page is not offline"
    # header: the spec, seed, faults injected, the failure with its checker and instance, the repro line
    facts = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", page))
    assert facts["spec"] == "billing/double-charge" and facts["seed"] == str(row["first_failing_seed"])
    assert "crash_after_effect=1" in facts["faults injected"], facts
    assert re.search(rf'class="goto-f" data-goto-f="0">idempotency</a> \[{instance}\] at step \d+', page)
    assert "reproduce: <code>duroxide-sim reproduce " in page
    # lanes: every instance of my spec and both nodes
    lanes = set(re.findall(r'data-lane="([^"]*)"', page))
    assert {f"instance:billing-sub-{i}" for i in range(1, 5)} | {"node:n0", "node:n1", "global"} <= lanes, lanes

    def lane(name: str) -> str:
        m = re.search(rf'data-lane="{re.escape(name)}">.*?<div class="track">(.*?)</div></div>', page, re.S)
        assert m, name
        return m.group(1)

    assert "op-failure ck-idempotency" in lane(f"instance:{instance}")
    run_lane = lane("global")
    assert "op-fault k-crash_after_effect" in run_lane and "op-crash" in run_lane and "op-restart" in run_lane
    # the steps: markers carry their step; the data block holds the trace, where the charge for the
    # failing instance was executed twice with the same activity id (the re-execution)
    assert len(re.findall(r'data-step="\d+"', lane(f"instance:{instance}"))) >= 5
    data = json.loads(re.search(r'<script type="application/json" id="tl-data">(.*?)</script>', page, re.S).group(1))
    execs = [r for r in map(json.loads, data["trace"]) if r.get("op") == "work_exec"]
    ids = [r["id"] for r in execs if r["instance"] == instance and r["activity"] == "billing::activity::charge"]
    assert len(ids) > len(set(ids)), f"no re-executed charge for {instance} in the timeline's trace: {ids}"


def test_reproduce_trace_is_byte_identical_across_runs_processes_and_hash_seeds(flows: pathlib.Path, planted: dict,
                                                                              tmp_path: pathlib.Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bill = next(r for r in planted["doc"]["scenarios"] if r["scenario"] == "billing/double-charge")
    line = repro_of(bill["unshrunk_failure"])  # the full random plan, as found
    outs = [paste(line, cwd=tmp_path, extra="--trace", hashseed=h) for h in ("0", "1", "4242", "random")]
    assert all(p.returncode == 1 for p in outs), [p.stderr[-500:] for p in outs]
    assert len({p.stdout for p in outs}) == 1, "the same seed gave different --trace output"
    trace = [ln for ln in outs[0].stdout.splitlines() if ln.startswith("{")]
    assert len(trace) > 50 and json.loads(trace[0])["op"] == "begin"
    # in-process, twice: the same bytes as the subprocesses
    argv = shlex.split(line)[1:] + ["--trace"]
    for _ in range(2):
        code, out, _err = run_cli(argv, capsys)
        assert code == 1 and out == outs[0].stdout
    # the other scenarios too (a passing seed under swarm faults, and an invariant failure)
    for ref, faults, want in ((f"{flows}/doc_approval.py:SPEC", "swarm", 0),
                              (f"{flows}/fanout.py:PARTIAL_COMPENSATION", "swarm", 1)):
        runs = [run_sub(["reproduce", ref, "--seed", "3", "--faults", faults, "--trace"], cwd=tmp_path, hashseed=h)
                for h in ("0", "987")]
        assert [r.returncode for r in runs] == [want, want], [r.stderr[-500:] for r in runs]
        assert runs[0].stdout == runs[1].stdout


def test_run_json_rows_are_the_same_under_other_hash_seeds(flows: pathlib.Path, planted: dict) -> None:
    again = run_sub(["run", flows.name, "--variants", "all", "--seeds", "20", "--json"], cwd=flows.parent, hashseed="777")
    assert again.returncode == 1
    assert without_seconds(json.loads(again.stdout)["scenarios"]) == without_seconds(planted["doc"]["scenarios"])


# --------------------------------------------------------------------------------------------------
# explore
# --------------------------------------------------------------------------------------------------

def test_explore_finds_the_planted_bug_at_its_lowest_seed_with_jobs_1_and_2(flows: pathlib.Path, sparse: dict,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lowest = sparse["first_failing_seed"]
    argv = ["explore", str(flows), "--variants", "double-charge", "--faults", SPARSE_CRASH, "--budget-s", "5", "--json"]
    rows = {}
    for jobs in ("1", "2"):
        code, out, err = run_cli([*argv, "--jobs", jobs], capsys)
        assert code == 1, err[-2000:]
        doc = json.loads(out)
        assert set(doc) == {"ok", "scenarios", "load_errors"} and doc["ok"] is False
        (row,) = doc["scenarios"]
        assert set(row) == ROW_KEYS
        assert row["first_failing_seed"] == lowest and row["failures"] == 1 and row["seeds"] == lowest + 1, row
        assert f"(seed {lowest})" in row["first_failure"] and "idempotency [billing-sub-" in row["first_failure"]
        rows[jobs] = row
    assert without_seconds([rows["2"]]) == without_seconds([rows["1"]])
    # the table says the same
    code, out, _err = run_cli(argv[:-1], capsys)
    assert code == 1
    assert f"FAILED billing/double-charge: 1 of {lowest + 1} seeds broke a property; first:" in out
    assert f"(seed {lowest})" in out


def test_explore_of_correct_scenarios_runs_them_all_within_the_budget(flows: pathlib.Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["explore", str(flows), "--budget-s", "1.5", "--json"], capsys)
    assert code == 0, err[-2000:]
    doc = json.loads(out)
    assert doc["ok"] is True and doc["load_errors"] == []
    assert [r["scenario"] for r in doc["scenarios"]] == ["billing", "doc_approval", "fanout"]
    assert all(set(r) == ROW_KEYS and r["seeds"] >= 1 and r["failures"] == 0 for r in doc["scenarios"])


# --------------------------------------------------------------------------------------------------
# --faults, --json, seed ranges
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("faults", ["none", "all", "swarm", '{"rates": {"crash": 0.1, "delay": 0.2}, "until_ms": 300000}',
                                    '{"script": [[1, "crash_after_effect"]]}'])
def test_valid_faults_values_run_my_correct_scenarios(flows: pathlib.Path, faults: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", str(flows), "--seeds", "4", "--faults", faults, "--json"], capsys)
    assert code == 0, err[-2000:]
    rows = json.loads(out)["scenarios"]
    assert [r["seeds"] for r in rows] == [4, 4, 4]
    if faults == "none":
        assert all(r["faults_injected"] == 0 and r["fault_kinds"] == [] for r in rows)
    else:
        assert sum(r["faults_injected"] for r in rows) > 0


@pytest.mark.parametrize("faults, named", [
    ("{not json", "not a fault plan"),
    ('{"rates": {"meteor": 0.1}}', "unknown fault kind 'meteor'"),
    ('{"rates": {"crash": -0.1}}', "-0.1"),
    ('{"rates": {"crash": 1.5}}', "1.5"),
    ('{"rates": {"crash": "0.1"}}', "'0.1'"),
    ('{"until_ms": -5}', "until_ms"),
    ('{"script": [[0, "crash"]]}', "start at 1"),
])
def test_bad_faults_plans_are_usage_errors_naming_the_problem(flows: pathlib.Path, faults: str, named: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", str(flows), "--seeds", "2", "--faults", faults], capsys)
    assert code == 2 and out == ""
    assert "--faults" in err and named in err and "Traceback" not in err, err
    code, _out, err = run_cli(["reproduce", f"{flows}/billing.py:SPEC", "--seed", "0", "--faults", faults], capsys)
    assert code == 2 and named in err and "Traceback" not in err, err


def test_a_faults_value_that_is_neither_a_keyword_nor_json_says_what_is_accepted(flows: pathlib.Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """README: ``--faults all|swarm|none|JSON``. A user who types a fault kind (``--faults crash``)
    or a keyword in capitals must be told the accepted forms, not only a JSON parser's complaint
    about "line 1 column 1"; ``reproduce`` (which takes JSON, swarm or none) likewise for ``all``."""
    for value in ("crash", "ALL"):
        code, _out, err = run_cli(["run", str(flows), "--seeds", "1", "--faults", value], capsys)
        assert code == 2 and "Traceback" not in err
        assert all(word in err for word in ("all", "swarm", "none")) or value in err, \
            f"--faults {value}: the error does not say what is accepted: {err.strip()!r}"
    code, _out, err = run_cli(["reproduce", f"{flows}/billing.py:SPEC", "--seed", "0", "--faults", "all"], capsys)
    assert code in (0, 1) or ("--faults" in err and "swarm" in err and "none" in err), \
        f"reproduce --faults all: neither accepted nor explained: {err.strip()!r}"


def test_json_documents_have_the_documented_keys(flows: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(["run", str(flows), "--seeds", "3", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"ok", "scenarios", "load_errors"} and doc["ok"] is True
    assert all(set(r) == ROW_KEYS and r["first_failing_seed"] is None and r["unshrunk_failure"] is None
               for r in doc["scenarios"])
    code, out, _err = run_cli(["reproduce", f"{flows}/fanout.py:PARTIAL_COMPENSATION", "--seed", "2", "--faults", "none",
                               "--json"], capsys)
    assert code == 1
    summary = json.loads(out)
    assert {"spec", "seed", "plan", "plan_json", "steps", "trace_sha256", "faults_injected", "failures"} <= set(summary)
    assert summary["spec"] == "fanout/partial-compensation" and summary["seed"] == 2
    (f,) = summary["failures"]
    assert f["checker"] == "invariants" and "no_stranded_reservations" in f["message"]
    assert f["repro"].startswith("duroxide-sim reproduce ") and "--seed 2 " in f["repro"]


def test_first_seed_selects_the_seeds_run(flows: pathlib.Path, sparse: dict, capsys: pytest.CaptureFixture[str]) -> None:
    lowest = sparse["first_failing_seed"]
    base = ["run", str(flows), "--variants", "double-charge", "--faults", SPARSE_CRASH, "--no-shrink", "--json"]
    code, out, _ = run_cli([*base, "--first-seed", str(lowest), "--seeds", "1"], capsys)
    row = json.loads(out)["scenarios"][0]
    assert code == 1 and row["seeds"] == 1 and row["first_failing_seed"] == lowest
    assert row["first_failure"] == sparse["first_failure"]
    if lowest > 1:  # the seeds below the lowest failing seed all pass
        code, out, _ = run_cli([*base, "--first-seed", "0", "--seeds", str(lowest)], capsys)
        assert code == 0 and json.loads(out)["scenarios"][0]["seeds"] == lowest


def test_negative_and_huge_first_seeds_run_and_their_repro_lines_reproduce(flows: pathlib.Path, tmp_path: pathlib.Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", str(flows), "--variants", "partial-compensation", "--first-seed", "-3", "--seeds", "2",
                              "--json"], capsys)
    assert code == 1, err[-1500:]
    row = json.loads(out)["scenarios"][0]
    assert row["seeds"] == 2 and row["first_failing_seed"] == -3 and "(seed -3)" in row["first_failure"]
    assert "--seed -3 " in repro_of(row["first_failure"])
    pasted = paste(repro_of(row["first_failure"]), cwd=tmp_path)
    assert pasted.returncode == 1 and row["first_failure"].splitlines()[0] in pasted.stdout, pasted.stderr[-1000:]
    huge = str(10**30)
    code, out, err = run_cli(["run", str(flows), "--first-seed", huge, "--seeds", "2", "--json"], capsys)
    assert code == 0, err[-1500:]
    assert [r["seeds"] for r in json.loads(out)["scenarios"]] == [2, 2, 2]


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "-1"], ["--first-seed", "abc"], ["--first-seed", "1.5"]])
def test_nonsense_seed_arguments_are_usage_errors(flows: pathlib.Path, argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", str(flows), *argv], capsys)
    assert code == 2 and out == "" and argv[0] in err and "Traceback" not in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_huge_seed_count_is_refused_or_runs_never_a_traceback(flows: pathlib.Path, tmp_path: pathlib.Path,
                                                                jobs: str) -> None:
    """``--seeds 10**23``: either a usage error naming --seeds (exit 2), or the run starts and keeps
    running seeds (stopped here after a few seconds). Not a traceback ending in exit 1, which
    README reserves for "a property failed"."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "duroxide_sim", "run", flows.name, "--seeds", str(10**23),
                                 "--jobs", jobs], cwd=flows.parent, stdout=o, stderr=e, start_new_session=True)
        try:
            code = proc.wait(timeout=12)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
    text = err.read_text()
    assert "Traceback" not in text, f"--seeds 10**23 (--jobs {jobs}) crashed (exit {code}):\n{text[-1500:]}"
    assert code is None or (code == 2 and "--seeds" in text), (code, text[-1500:])


# --------------------------------------------------------------------------------------------------
# Author mistakes
# --------------------------------------------------------------------------------------------------

SMALL_GOOD = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_activity("shop::activity::ship")
        def ship(ctx, order):
            world.put_if_absent(f"shipped:{{order}}", True)
            return "shipped"

        @rt.register_orchestration("shop::orchestration::order")
        def order(ctx, oid):
            yield ctx.schedule_timer(60_000)
            return (yield ctx.schedule_activity("shop::activity::ship", oid))

    SPEC = SimSpec(name={name!r}, setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance=f"o{{i}}", orchestration="shop::orchestration::order", input=i) for i in range(3)])
''')

REGISTERS_NOTHING = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        pass   # forgot to register the handlers

    SPEC = SimSpec(name="invoicing", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance="inv-1", orchestration="invoice::orchestration::send", input=1)])
''')


def test_a_setup_that_registers_nothing_is_refused_naming_the_scenario_and_the_rest_still_runs(
        tmp_path: pathlib.Path) -> None:
    d = write_dir(tmp_path / "scen", {"invoicing.py": REGISTERS_NOTHING, "shop.py": SMALL_GOOD.format(name="shop")})
    proc = run_sub(["run", "scen", "--seeds", "3", "--json"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert ("scenario invoicing cannot run" in proc.stderr
            and "'invoice::orchestration::send', which its setup does not register (registered: none)" in proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and [r["scenario"] for r in doc["scenarios"]] == ["shop"]
    assert [e["scenario"] for e in doc["load_errors"]] == ["invoicing"]
    assert d.exists()


def test_a_variant_that_starts_an_unregistered_orchestration_is_refused_with_its_label(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SMALL_GOOD.format(name="shop") + textwrap.dedent('''
        import attrs
        TYPO = attrs.evolve(SPEC, name="shop/typo", ref=__file__ + ":TYPO",
                            starts=[Start(instance="o1", orchestration="shop::orchestration::ordr", input=1)])
        SLOW = attrs.evolve(SPEC, name="shop/slow", ref=__file__ + ":SLOW")
        VARIANTS = {"typo": TYPO, "slow": SLOW}
    ''')
    d = write_dir(tmp_path / "scen", {"shop.py": text})
    code, out, err = run_cli(["run", str(d), "--variants", "all", "--seeds", "2", "--json"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "scenario shop/typo cannot run" in err and "'shop::orchestration::ordr'" in err
    assert "(registered: 'shop::orchestration::order')" in err
    assert [r["scenario"] for r in json.loads(out)["scenarios"]] == ["shop/slow"]


GHOST_SIGNAL = textwrap.dedent('''
    from duroxide_sim.sim.harness import Signal, SimSpec, Start

    def setup(rt, world):
        @rt.register_orchestration("shop::orchestration::await_payment")
        def await_payment(ctx, order):
            w = yield ctx.select2(ctx.wait_for_event("paid"), ctx.schedule_timer(3_600_000))
            return "paid" if w.index() == 0 else "expired"

    def order_1_paid(result):
        st = result.statuses["order-1"]
        return None if (st.status, st.output) == ("Completed", "paid") else f"order-1: {st.status} {st.output!r}"

    SPEC = SimSpec(name="payments", setup=setup, ref=__file__ + ":SPEC", invariants=[order_1_paid],
                   starts=[Start(instance="order-1", orchestration="shop::orchestration::await_payment", input=1)],
                   signals=[Signal(instance="order-1", name="paid", at_ms=1_800_000),
                            Signal(instance="order-l", name="paid", at_ms=1_800_000)])   # never started (a typo)
''')


def test_a_signal_for_an_instance_never_started_does_not_break_the_run(tmp_path: pathlib.Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """README: a raise_event for an instance with no row is an orphan message (parked, expires):
    the run goes on, the other instance gets its own signal, no traceback."""
    d = write_dir(tmp_path / "scen", {"payments.py": GHOST_SIGNAL})
    code, out, err = run_cli(["run", str(d), "--seeds", "10", "--json"], capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and json.loads(out)["scenarios"][0]["failures"] == 0


INVARIANT_RETURNS = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_activity("shop::activity::ship")
        def ship(ctx, order):
            world.put_if_absent(f"shipped:{order}", True)
            return "shipped"

        @rt.register_orchestration("shop::orchestration::order")
        def order(ctx, oid):
            return (yield ctx.schedule_activity("shop::activity::ship", oid))

    def unshipped(result):            # the offenders: a non-empty list means broken
        return [f"o-{i}" for i in range(3, 5) if not result.world.exists(f"shipped:{i}")]

    def problem_count(result):
        return 2

    def problems_by_order(result):
        return {"order-7": "missing"}

    def all_shipped(result):          # a predicate: True when it holds
        return all(result.world.exists(f"shipped:{i}") for i in range(3))

    def predicate_false(result):
        return False

    def statuses_seen(result):        # raises: an instance that does not exist
        return result.statuses["o-99"].status

    SPEC = SimSpec(name="returns", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance=f"o{i}", orchestration="shop::orchestration::order", input=i) for i in range(3)],
                   invariants=[unshipped, problem_count, problems_by_order, all_shipped, predicate_false, statuses_seen])
''')


def test_invariants_returning_non_strings_or_raising_are_reported_with_their_value_or_where(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "scen", {"returns.py": INVARIANT_RETURNS})
    code, out, err = run_cli(["reproduce", f"{d}/returns.py:SPEC", "--seed", "0", "--faults", "none"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "invariants (seed 0): unshipped: ['o-3', 'o-4']" in out
    assert "invariants (seed 0): problem_count: 2" in out
    assert "invariants (seed 0): problems_by_order: {'order-7': 'missing'}" in out
    assert "predicate_false: returned False (invariants return None when they hold, else a message)" in out
    line = next(i for i, ln in enumerate(INVARIANT_RETURNS.splitlines(), 1) if 'result.statuses["o-99"]' in ln)
    assert f"invariants (seed 0): statuses_seen: raised KeyError: 'o-99' (at {d}/returns.py:{line})" in out, out
    assert "all_shipped" not in out
    # the same rows in one process and in two worker processes
    rows = {}
    for jobs in ("1", "2"):
        code, out, err = run_cli(["run", str(d), "--seeds", "3", "--faults", "none", "--json", "--jobs", jobs], capsys)
        assert code == 1, err[-1500:]
        rows[jobs] = without_seconds(json.loads(out)["scenarios"])
        assert rows[jobs][0]["failures"] == 3 and rows[jobs][0]["first_failure"].startswith("invariants (seed 0): unshipped")
    assert rows["1"] == rows["2"]


ETERNAL_MONITOR = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start

    def setup(rt, world):
        @rt.register_activity("ops::activity::probe")
        def probe(ctx, target):
            return "up"                                # a read-only probe

        @rt.register_orchestration("ops::orchestration::uptime_monitor")
        def monitor(ctx, target):
            while True:                                # eternal: no exit, no continue-as-new
                yield ctx.schedule_activity("ops::activity::probe", target)
                yield ctx.schedule_timer(3_600_000)

        @rt.register_orchestration("ops::orchestration::report")
        def report(ctx, x):
            yield ctx.schedule_timer(60_000)
            return "sent"

    SPEC = SimSpec(name="uptime", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance="mon-api", orchestration="ops::orchestration::uptime_monitor", input="api"),
                           Start(instance="daily-report", orchestration="ops::orchestration::report", input=1)])
''')


def test_an_eternal_timer_loop_is_judged_within_the_horizon_and_a_step_bound_says_what_to_do(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: liveness also in runs that never go quiet (beside an eternal monitor): the monitor
    is not "stuck" at the 7-day horizon; ``--max-steps`` turns an eternal run into a liveness
    failure that says how to fix the spec."""
    d = write_dir(tmp_path / "scen", {"uptime.py": ETERNAL_MONITOR})
    code, out, err = run_cli(["run", str(d), "--seeds", "3", "--json"], capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    code, out, err = run_cli(["run", str(d), "--seeds", "1", "--faults", "none", "--max-steps", "300", "--json"], capsys)
    assert code == 1
    first = json.loads(out)["scenarios"][0]["first_failure"]
    assert first.startswith("liveness at step 300 (seed 0): no quiescence within 300 steps"), first
    assert "horizon" in first and "--max-steps 300" in repro_of(first)


CHATTY = textwrap.dedent('''
    import sys
    from duroxide_sim.sim.harness import SimSpec, Start

    print("loading the chatty scenario " + "=" * 5000)

    def setup(rt, world):
        print("setup called")

        @rt.register_activity("etl::activity::transform")
        def transform(ctx, batch):
            for i in range(200):
                print(f"transform batch {batch} row {i} " + "x" * 100)
            print("{\\"not\\": \\"the document\\"}")
            world.put_if_absent(f"done:{batch}", True)
            return batch

        @rt.register_orchestration("etl::orchestration::pipeline")
        def pipeline(ctx, n):
            print(f"orchestrating {n} batches")
            out = yield ctx.all([ctx.schedule_activity("etl::activity::transform", b) for b in range(n)])
            return len(out)

    SPEC = SimSpec(name="chatty", setup=setup, ref=__file__ + ":SPEC",
                   starts=[Start(instance="etl-1", orchestration="etl::orchestration::pipeline", input=5)])
''')


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_scenario_that_prints_a_lot_keeps_the_json_document_clean(tmp_path: pathlib.Path, jobs: str) -> None:
    d = write_dir(tmp_path / "scen", {"chatty.py": CHATTY})
    proc = run_sub(["run", str(d), "--seeds", "4", "--json", "--jobs", jobs], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["scenarios"][0]["seeds"] == 4
    assert "transform batch" in proc.stderr and len(proc.stderr) > 100_000
    if jobs == "1":
        table = run_sub(["run", str(d), "--seeds", "2"], cwd=tmp_path)
        assert table.returncode == 0 and "all properties held" in table.stdout


def test_two_scenarios_with_the_same_spec_name_are_told_apart(tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A copied module whose SPEC name was not changed. Either the CLI refuses it (exit 2, naming
    both files), or the two rows can be told apart and each is reported as if it ran alone - in
    particular the failing one's plan is shrunk (README: "A failing seed is reported with its fault
    plan shrunk"), with its own spec, not with the other module's."""
    buggy = BILLING.replace('SPEC = make_spec("billing", __file__ + ":SPEC")',
                            'SPEC = make_spec("billing", __file__ + ":SPEC", double_charge=True)')
    pkg = f"dup_{uuid.uuid4().hex[:8]}"
    d = write_dir(tmp_path / pkg, {"__init__.py": "", "_helpers.py": HELPERS, "billing_new.py": buggy,
                                   "billing_old.py": BILLING})
    code, out, err = run_cli(["run", str(d), "--seeds", "10", "--json"], capsys)
    if code == 2:
        assert "billing_new.py" in err and "billing_old.py" in err and "billing" in err, err
        return
    rows = json.loads(out)["scenarios"]
    labels = [r["scenario"] for r in rows]
    failing = [r for r in rows if r["failures"]]
    assert len(failing) == 1 and "billing_new.py:SPEC" in failing[0]["first_failure"], rows
    # Alone, the same module's failing seed is shrunk to a smaller plan:
    alone = write_dir(tmp_path / f"alone_{uuid.uuid4().hex[:8]}", {"__init__.py": "", "_helpers.py": HELPERS,
                                                                    "billing_new.py": buggy})
    code_alone, out_alone, _ = run_cli(["run", str(alone), "--seeds", "10", "--json"], capsys)
    assert code_alone == 1 and "(shrunk: " in json.loads(out_alone)["scenarios"][0]["first_failure"]
    assert "(shrunk: " in failing[0]["first_failure"], (
        "next to another spec of the same name, the failing seed's plan is not shrunk (the shrinker ran the other "
        f"module's spec): {failing[0]['first_failure']}")
    assert len(set(labels)) == len(labels), f"two rows with the same label, which file is which? {labels}"


NUL_BYTES = b"x = 1\x00\n"


def test_non_python_files_and_subdirectories_in_the_scenario_directory(tmp_path: pathlib.Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Non-Python files are not scenario modules (left alone); a ``.py`` file that is not Python is
    a module that cannot load: reported with its file and reason, the others run, exit 2."""
    d = write_dir(tmp_path / "scen", {
        "shop.py": SMALL_GOOD.format(name="shop"), "README.md": "# scenarios\n", "plans.json": '{"a": 1}\n',
        "pipeline.yaml": "steps:\n  - build\n", "Makefile": "all:\n\ttrue\n",
        "nested/deep.py": SMALL_GOOD.format(name="deep"), "nested/__init__.py": "",
        "__pycache__/stale.cpython-311.pyc": b"\x00\x01garbage",
    })
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--json"], capsys)
    assert code == 0 and "Traceback" not in err, err[-1500:]
    assert [r["scenario"] for r in json.loads(out)["scenarios"]] == ["shop"]  # (subdirectories are not searched)
    assert not re.search(r"README|plans\.json|pipeline|Makefile|pycache", err), err
    (d / "binary.py").write_bytes(NUL_BYTES)
    code, out, err = run_cli(["run", str(d), "--seeds", "2", "--json"], capsys)
    assert code == 2 and "Traceback" not in err
    doc = json.loads(out)
    assert [r["scenario"] for r in doc["scenarios"]] == ["shop"]
    assert len(doc["load_errors"]) == 1 and doc["load_errors"][0]["scenario"].endswith("binary.py")
    assert "null bytes" in doc["load_errors"][0]["problem"]
    assert "binary.py" in err


FLAT_COMMON = textwrap.dedent('''
    """Shared by my flat scenario directory (scenarios/README: shared helpers live in _common.py)."""
    TEAM = {team!r}
    ORDERS = 3
''')

FLAT_SCENARIO = textwrap.dedent('''
    from duroxide_sim.sim.harness import SimSpec, Start
    from _common import ORDERS, TEAM

    def setup(rt, world):
        @rt.register_activity("shop::activity::charge")
        def charge(ctx, oid):
            {effect}
            return TEAM

        @rt.register_orchestration("shop::orchestration::order")
        def order(ctx, oid):
            yield ctx.schedule_timer(1_000)
            return (yield ctx.schedule_activity("shop::activity::charge", oid))

    def served_by_my_team(result):
        outs = {{st.output for st in result.statuses.values() if st.status == "Completed"}}
        return None if outs <= {{{team!r}}} else f"served by {{sorted(outs)}}, expected {team!r} (the _common.py next to me)"

    SPEC = SimSpec(name={name!r}, setup=setup, ref=__file__ + ":SPEC", invariants=[served_by_my_team],
                   starts=[Start(instance=f"o{{i}}", orchestration="shop::orchestration::order", input=i) for i in range(ORDERS)])
''')


def flat_dir(where: pathlib.Path, team: str, *, bug: bool = False) -> pathlib.Path:
    effect = 'world.incr("charges")' if bug else 'world.put_if_absent(f"charged:{oid}", True)'
    return write_dir(where, {"_common.py": FLAT_COMMON.format(team=team),
                             "shop.py": FLAT_SCENARIO.format(team=team, effect=effect, name=f"shop-{team}")})


def test_the_reproduce_line_of_a_flat_directory_scenario_using_its_common_helper_reproduces(
        tmp_path: pathlib.Path) -> None:
    """README: a flat directory's modules may import their ``_``-prefixed helper (``from _common
    import ...``), and "The printed `reproduce` line is one line, ready to paste". Pasted where
    ``run`` was typed, it must re-run the failure, not fail to import the helper."""
    flat_dir(tmp_path / "scen", "payments", bug=True)
    proc = run_sub(["run", "scen", "--seeds", "5", "--faults", '{"rates": {"crash_after_effect": 0.3}}', "--json"],
                   cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-1500:]
    first = json.loads(proc.stdout)["scenarios"][0]["first_failure"]
    pasted = paste(repro_of(first), cwd=tmp_path)
    assert pasted.returncode == 1 and first.splitlines()[0] in pasted.stdout, \
        f"the printed line does not reproduce (exit {pasted.returncode}): {pasted.stderr.strip()[-600:]}"


def test_two_flat_directories_with_their_own_common_helper_in_one_process(tmp_path: pathlib.Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A test suite calling ``main`` for two scenario directories, each with its own ``_common.py``
    (the name scenarios/README gives shared helpers): the second run must use the second
    directory's helper, as a fresh process does."""
    a = flat_dir(tmp_path / "team_a", "alpha")
    b = flat_dir(tmp_path / "team_b", "beta")
    code, out, err = run_cli(["run", str(b), "--seeds", "1", "--faults", "none", "--json"], capsys)
    assert code == 0, out[-1500:]  # alone it holds
    code, out, err = run_cli(["run", str(a), "--seeds", "1", "--faults", "none", "--json"], capsys)
    first = json.loads(out)["scenarios"][0]["first_failure"]
    assert code == 0, f"team_a's run used another directory's _common.py: {first}"
