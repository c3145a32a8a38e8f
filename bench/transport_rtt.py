"""How long a connection costs, and how long a round trip on an open one takes.

Two real transports on 127.0.0.1 with certificates from a fresh cluster CA. Measures, on the
standard asyncio loop and on uvloop:
  - handshake: TCP connect + TLS 1.3 with client certificates + Hello both ways;
  - request RTT: `Transport.request` and its reply on the kept-open connection.
Prints median and p99 in milliseconds, each the median over --repeats runs.

    .venv/bin/python bench/transport_rtt.py [--handshakes 200] [--requests 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudd import log
from cloudd.daemon.network.codec import PROTOCOL_VERSION, FrameDecoder, default_codec
from cloudd.daemon.network.tls import Hello, client_context
from cloudd.daemon.network.transport import Transport
from cloudd.pki import Identity, MemberKind, PkiFiles, init_ca, issue


@default_codec.register
@dataclass(frozen=True)
class BenchPing:
    n: int


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


async def handle(peer: Identity, msg: object) -> object:
    return msg


async def one_run(d: Path, *, handshakes: int, requests: int) -> dict[str, list[float]]:
    a = Transport(member="a", files=PkiFiles.for_member(d, "a"), handler=handle)
    b = Transport(member="b", files=PkiFiles.for_member(d, "b"), handler=handle)
    host, port = await a.start()
    await b.start()
    b.add_peer("a", host, port)
    ctx = client_context(PkiFiles.for_member(d, "b"))
    hello = default_codec.encode(Hello("b", PROTOCOL_VERSION))
    out: dict[str, list[float]] = {"handshake": [], "request RTT": []}
    try:
        for _ in range(handshakes):
            t0 = time.perf_counter()
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                           server_hostname="a")
            writer.write(hello)
            dec = FrameDecoder(default_codec)
            while not dec.feed(await reader.read(65536)):
                pass
            out["handshake"].append((time.perf_counter() - t0) * 1e3)
            writer.transport.abort()
        await b.request("a", BenchPing(0))  # connect once, then measure the open connection
        for i in range(requests):
            t0 = time.perf_counter()
            await b.request("a", BenchPing(i))
            out["request RTT"].append((time.perf_counter() - t0) * 1e3)
    finally:
        await b.close()
        await a.close()
    return out


def loops() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]]:
    found: list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]] = [
        ("asyncio", None)]
    try:
        import uvloop
    except ImportError:
        print("(uvloop is not installed: asyncio only)")
    else:
        found.append(("uvloop", uvloop.new_event_loop))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    log.configure(level="warning")  # a log line per handshake would be measured too
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        now = dt.datetime.now(dt.UTC)
        init_ca(d, now=now)
        for name in ("a", "b"):
            issue(d, name, now=now, kind=MemberKind.HOST, addresses=["127.0.0.1"])
        print(f"{'loop':<8} {'measure':<12} {'median ms':>10} {'p99 ms':>10} {'samples':>8}")
        rows: list[list[object]] = []
        for loop_name, factory in loops():
            runs = []
            for _ in range(args.repeats):
                with asyncio.Runner(loop_factory=factory) as runner:
                    runs.append(runner.run(one_run(d, handshakes=args.handshakes,
                                                   requests=args.requests)))
            for measure in ("handshake", "request RTT"):
                medians = [statistics.median(r[measure]) for r in runs]
                p99s = [p99(r[measure]) for r in runs]
                count = sum(len(r[measure]) for r in runs)
                print(f"{loop_name:<8} {measure:<12} {statistics.median(medians):>10.3f} "
                      f"{statistics.median(p99s):>10.3f} {count:>8}")
                rows.append([loop_name, measure, round(statistics.median(medians), 3),
                             round(statistics.median(p99s), 3), count])
    from report import table, write_result

    ms = {(r[0], r[1]): r[2] for r in rows}
    figure = "; ".join(f"{loop}: {ms[loop, 'handshake']:.1f} ms / {ms[loop, 'request RTT']:.3f} ms"
                       for loop in ("uvloop", "asyncio") if (loop, "handshake") in ms)
    write_result("transport_rtt", what="mTLS handshake / request round trip on an open "
                 "connection, 127.0.0.1", figure=figure,
                 tables=[table("transport", ["loop", "measure", "median ms", "p99 ms",
                                             "samples"], rows)])


if __name__ == "__main__":
    main()
