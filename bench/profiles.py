"""The profile targets of ``python -m bench.profile``, built on the scenarios' fixtures."""

from __future__ import annotations

import cProfile
import gc
import shutil
import time
import uuid
import zlib
from collections.abc import Callable

import sqlalchemy as sa

from bench.direct import DirectNode, insert_changes, new_request
from bench.harness import Run, median, timed
from bench.models import MODULE, Item, counter, item_rows, plain_metadata, plain_rows
from bench.profiling import HandleProfiler, gc_pauses, profiled, show, stage_recorder, target
from bench.scenarios.apply import ApplyBench
from bench.scenarios.encode import EncodeBench
from bench.scenarios.merge import SCHEMA, merge_input
from bench.scenarios.pull import PullBench
from bench.scenarios.roundtrip import RoundTripBench
from bench.services import Services
from dbsync_mq import SyncClient, commands
from dbsync_mq.core import codec, messages
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.merge import plan_merge
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from worker.process import create_server_engine


def _print_medians(title: str, samples: dict[str, list[float]]) -> None:
    print(f"\n=== {title} (median ms) ===")
    for name, values in samples.items():
        print(f"  {name:<48} {median(values) * 1000:8.2f}   (n={len(values)})")


@target("apply")
def apply(services: Services) -> None:
    bench = ApplyBench(services, 10_000)
    try:
        profile = cProfile.Profile()
        for _ in range(3):
            bench.reset()
            profile.enable()
            bench.ours()
            profile.disable()
        show(profile, "Server.handle, 10,000-row insert push on PG (3 runs)")
    finally:
        bench.close()


@target("handle")
def handle(services: Services) -> None:
    """What the worker spends per small request, against a bare row-lock transaction."""
    url = services.postgres_database()
    commands.init(url, (MODULE,))
    engine = create_server_engine(url)
    plain_metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(counter.insert().values(id=1, value=0))
    server = Server(engine, ModelSet.in_modules([MODULE]))
    node = DirectNode(server, url)
    key = iter(range(1, 1_000_000))
    head = [0]
    last = [0]

    def accepted() -> None:
        last[0] = next(key)
        node.reply_to(node.push(head[0], insert_changes(item_rows(last[0], 1))))
        head[0] += 1

    def refused() -> None:
        # The same row as the last version: it cannot be applied on top of it.
        outcome = server.handle(node.push(head[0] - 1, insert_changes(item_rows(last[0], 1))))
        assert outcome.code == "pull-required", outcome

    def pull_one() -> None:
        body = {"since": head[0] - 1, "deleted": encode_changes([])}
        node.reply_to(node.message(new_request(messages.PULL, node.node_id, body)))

    def bare() -> None:
        with engine.begin() as connection:
            connection.execute(sa.select(counter.c.value).with_for_update())
            connection.execute(plain_rows.insert().values(payload=b"x" * 64))

    cases: dict[str, Callable[[], None]] = {
        "1-row push, accepted (Server.handle)": accepted,
        "1-row push, refused pull-required (Server.handle)": refused,
        "pull of 1 version (Server.handle)": pull_one,
        "bare SELECT FOR UPDATE + INSERT + COMMIT": bare,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(200):
        for name, case in cases.items():
            samples[name].append(timed(case))
    _print_medians("per request, PG", samples)
    for name in list(cases)[:3]:
        show(profiled(cases[name], 200), f"{name}, 200 calls", top=30)
    engine.dispose()


@target("roundtrip")
def roundtrip(services: Services) -> None:
    bench = RoundTripBench(services, "postgresql")
    try:
        timeline: dict[str, dict[str, float]] = {}
        bench.worker.worker.add_stage_hook(stage_recorder(timeline))
        handler = HandleProfiler(bench.worker.worker.server, (messages.PUSH,), active=False)
        client_profile = _push_stages(bench, timeline, handler)
        show(client_profile, "client.push() of 1 row, PG server (client thread, 100 calls)", 30)
        show(handler.profile, "Server.handle of those pushes (worker handler thread)", 30)
    finally:
        bench.close()


def _push_stages(
    bench: RoundTripBench, timeline: dict[str, dict[str, float]], handler: HandleProfiler
) -> cProfile.Profile:
    """Print where 100 pushes spent their time; return the profile of 100 more (and have
    ``handler`` profile the worker's side of those)."""
    for _ in range(5):
        bench.write_one()
        bench.ours()
    samples: dict[str, list[float]] = {}
    profile = cProfile.Profile()
    for index in range(200):
        bench.write_one()
        timeline.clear()
        started = time.perf_counter()
        if index >= 100:
            handler.active = True
            profile.enable()
        bench.ours()
        if index >= 100:
            profile.disable()
            continue
        ended = time.perf_counter()
        while not any("after-ack" in stages for stages in timeline.values()):
            time.sleep(0.001)  # the worker acks after the client may have its reply
        (stages,) = timeline.values()
        spans = {
            "client start -> worker before-transaction": stages["before-transaction"] - started,
            "worker transaction (before -> after-commit)": stages["after-commit"]
            - stages["before-transaction"],
            "worker publish reply + event (-> after-reply)": stages["after-reply"]
            - stages["after-commit"],
            "worker ack (-> after-ack)": stages["after-ack"] - stages["after-reply"],
            "worker after-reply -> client.push() returns": ended - stages["after-reply"],
            "client.push() total": ended - started,
        }
        for name, value in spans.items():
            samples.setdefault(name, []).append(value)
    bare = [timed(bench.bare.call) for _ in range(100)]
    samples["bare pika request/reply total"] = bare
    _print_medians("one-row push round trip, PG, stages", samples)
    return profile


@target("encode")
def encode(services: Services) -> None:
    bench = EncodeBench(services, 10_000)
    try:
        profile = cProfile.Profile()
        with gc_pauses() as pauses:
            started = time.perf_counter()
            for _ in range(3):
                bench.forget_inflight()
                profile.enable()
                bench.ours()
                profile.disable()
            total = time.perf_counter() - started
        print(f"\nGC during 3 prepares ({total * 1000:.0f} ms in all): {dict(pauses)}")
        print(_gc_share(bench.ours, bench.forget_inflight))
        _print_sizes(bench)
        show(profile, "SyncClient._prepare_push of 10,000 inserts (3 runs)", 30)
    finally:
        bench.close()


def _gc_share(function: Callable[[], object], before: Callable[[], object]) -> str:
    """Median time of ``function`` with the cyclic GC on and off."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(5):
        for enabled in (True, False):
            before()
            if not enabled:
                gc.disable()
            try:
                times[enabled].append(timed(function))
            finally:
                gc.enable()
    return (
        f"median {median(times[True]) * 1000:.0f} ms with the GC, "
        f"{median(times[False]) * 1000:.0f} ms with the GC disabled"
    )


def _print_sizes(bench: EncodeBench) -> None:
    """Where the bytes of the pushed body go."""
    rows = bench.rows
    changes = insert_changes(rows, 1 << 50)
    packed_changes = encode_changes(changes)
    values_only = codec.encode([list(r.values()) for r in rows])
    print(
        f"\nbody {len(bench.body):,} B = changes {len(packed_changes):,} B + envelope/request "
        f"{len(bench.body) - len(packed_changes):,} B; the row values alone (arrays, same codec) "
        f"{len(values_only):,} B, so [command, key, hlc, clocks] cost "
        f"{(len(packed_changes) - len(values_only)) / len(rows):.1f} B per row; "
        f"zlib level 1 of the body: {len(zlib.compress(bench.body, 1)):,} B"
    )


@target("pull")
def pull(services: Services) -> None:
    bench = PullBench(Run(quick=True, services=services))
    handler = HandleProfiler(bench.worker.worker.server, (messages.PULL,))
    try:
        bench.seed(10_000)
        profile = cProfile.Profile()
        with gc_pauses() as pauses:
            for _ in range(3):
                copy = services.path(f"pull-{uuid.uuid4().hex[:8]}.db")
                shutil.copyfile(bench.template, copy)
                client = SyncClient(
                    sa.create_engine(f"sqlite:///{copy}"),
                    broker_url=services.broker_url,
                    namespace=bench.setup.namespace,
                    models=[Item],
                    timeout=300,
                )
                profile.enable()
                client.pull()
                profile.disable()
                client.close()
                client.engine.dispose()
        print(f"\nGC during 3 pulls: {dict(pauses)}")
        show(profile, "client.pull() of 10,000 inserts (client thread, 3 runs)", 30)
        show(handler.profile, "Server.handle of those pulls (worker handler thread)", 30)
    finally:
        bench.close()


@target("repair")
def repair(services: Services) -> None:
    """client.repair() of 100,000 rows, and the worker's handle of it."""
    from bench.scenarios.repair import _fill

    bench = PullBench(Run(quick=True, services=services))
    handler = HandleProfiler(bench.worker.worker.server, (messages.REPAIR,))
    try:
        _fill(bench.engine, 100_000)
        profile = cProfile.Profile()
        copy = services.path(f"repair-{uuid.uuid4().hex[:8]}.db")
        shutil.copyfile(bench.template, copy)
        client = SyncClient(
            sa.create_engine(f"sqlite:///{copy}"),
            broker_url=services.broker_url,
            namespace=bench.setup.namespace,
            models=[Item],
            timeout=300,
        )
        started = time.perf_counter()
        profile.enable()
        client.repair()
        profile.disable()
        print(f"\nrepair of 100,000 rows: {time.perf_counter() - started:.2f} s (profiled)")
        client.close()
        client.engine.dispose()
        show(profile, "client.repair() of 100,000 rows (client thread)", 30)
        show(handler.profile, "Server.handle of that repair (worker handler thread)", 30)
    finally:
        bench.close()


@target("pullmem")
def pull_memory(services: Services) -> None:
    """Where the pulling process's memory goes, pull of 200,000 inserts (subprocess)."""
    bench = PullBench(Run(quick=False, services=services))
    try:
        bench.seed(200_000)
        print(bench.ours("phases"))
    finally:
        bench.close()


@target("merge")
def merge(services: Services) -> None:
    del services
    for size in (10_000, 100_000):
        data = merge_input(size)
        with gc_pauses() as pauses:
            with_gc = timed(lambda data=data: plan_merge(SCHEMA, data))  # type: ignore[misc]
        gc.disable()
        try:
            without_gc = timed(lambda data=data: plan_merge(SCHEMA, data))  # type: ignore[misc]
        finally:
            gc.enable()
        print(
            f"plan_merge {size:,}: {with_gc * 1000:.0f} ms with the GC "
            f"({dict(pauses)}), {without_gc * 1000:.0f} ms with the GC disabled"
        )
    data = merge_input(100_000)
    show(profiled(lambda: plan_merge(SCHEMA, data), 1), "plan_merge, 100,000 conflicts", 25)
