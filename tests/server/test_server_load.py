"""The server under load (slow suite): concurrent clients, some hanging up after sending, some sending
a byte at a time, while a monitor asks for ``/health``. Run with ``-s`` to see the figures measured
(the "Server under load" section of BENCHMARKS.md)::

    nice -n 19 pytest tests/server/test_server_load.py -m slow -s
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dalle_zero.server import GenerationService, ServerLimits
from tests.factories.pipelines import CAPTIONS, tiny_pipeline
from tests.factories.server import call, connect, handler_threads, post_request, read_all, running, trickle

CLIENTS = 16  # of which ABANDONING hang up after sending and SLOW send a byte every SLOW_INTERVAL s
ABANDONING = 2
SLOW = 2
REQUESTS_PER_CLIENT = 10
MAX_CONNECTIONS = 24
MAX_QUEUE = 6  # below the number of clients, so that some requests are told to retry later
REQUEST_TIMEOUT = 2.0
SLOW_INTERVAL = 0.3


def rss_bytes() -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.mark.slow
def test_under_load_no_request_is_lost_or_served_twice_and_the_server_stays_responsive(caplog):
    caplog.set_level(logging.ERROR, "dalle_zero.server")
    limits = ServerLimits(max_images=4, max_candidates=8, max_queue=MAX_QUEUE, queue_timeout=60.0)
    service = GenerationService(tiny_pipeline(clip=True), limits)
    answers: Counter[int] = Counter()  # seed -> 200 answers carrying it
    latencies: list[float] = []  # per request, retries included
    busy_answers = abandoned_sent = 0
    slow_closes: list[tuple[bytes, float]] = []
    health_latencies: list[float] = []
    peaks = {"threads": 0, "rss": 0}
    lock = threading.Lock()
    done = threading.Event()

    with running(service, timeout=REQUEST_TIMEOUT, max_connections=MAX_CONNECTIONS) as server:

        def patient(client: int) -> None:
            nonlocal busy_answers
            for r in range(REQUESTS_PER_CLIENT):
                seed = 1000 * client + r
                body = {"caption": CAPTIONS[seed % len(CAPTIONS)], "n": 2, "candidates": 4, "seed": seed}
                start = time.monotonic()
                while True:
                    status, response, result = call(server, "POST", "/generate", body)
                    if status != 503:
                        break
                    with lock:
                        busy_answers += 1
                    time.sleep(min(float(response.getheader("Retry-After")), 1.0))
                with lock:
                    latencies.append(time.monotonic() - start)
                    if status == 200 and result["seed"] == seed:
                        answers[seed] += 1

        def abandoning(client: int) -> None:
            nonlocal abandoned_sent
            rng = random.Random(client)
            for r in range(REQUESTS_PER_CLIENT):
                with connect(server) as sock:
                    sock.sendall(post_request({"caption": "a red star", "n": 4, "candidates": 8, "seed": r}))
                    time.sleep(rng.uniform(0, 0.3))  # some leave while queued, some at once
                with lock:
                    abandoned_sent += 1

        def slow(client: int) -> None:
            for _ in range(REQUESTS_PER_CLIENT // 2):
                stop = threading.Event()
                with connect(server) as sock:
                    start = time.monotonic()
                    trickle(
                        sock, b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 100, SLOW_INTERVAL, stop
                    )
                    answer = read_all(sock)
                    stop.set()
                with lock:
                    slow_closes.append((answer[:12], time.monotonic() - start))

        def monitor() -> None:
            while not done.is_set():
                start = time.monotonic()
                status = call(server, "GET", "/health")[0]
                with lock:
                    health_latencies.append(time.monotonic() - start if status == 200 else float("inf"))
                    peaks["threads"] = max(peaks["threads"], handler_threads())
                    peaks["rss"] = max(peaks["rss"], rss_bytes() or 0)
                time.sleep(0.2)

        rss_before = rss_bytes() or 0
        roles = [abandoning] * ABANDONING + [slow] * SLOW + [patient] * (CLIENTS - ABANDONING - SLOW)
        threads = [threading.Thread(target=role, args=(i,), daemon=True) for i, role in enumerate(roles)]
        watcher = threading.Thread(target=monitor, daemon=True)
        started = time.monotonic()
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.monotonic() - started
        done.set()
        watcher.join(30)
        counts = call(server, "GET", "/health")[2]["queue"]["counts"]

    patient_clients = CLIENTS - ABANDONING - SLOW
    expected = {1000 * c + r for c in range(ABANDONING + SLOW, CLIENTS) for r in range(REQUESTS_PER_CLIENT)}
    ok = sum(answers.values())
    figures = (
        f"{CLIENTS} clients ({patient_clients} patient, {ABANDONING} hanging up, {SLOW} slowloris) in {wall:.1f} s: "
        f"{ok} requests served, {busy_answers} told to retry (503), {abandoned_sent} abandoned of which "
        f"{counts['abandoned']} never sampled; latency p50 {statistics.median(latencies):.2f} s, "
        f"p95 {percentile(latencies, 0.95):.2f} s; /health p50 {statistics.median(health_latencies) * 1000:.0f} ms, "
        f"max {max(health_latencies) * 1000:.0f} ms; slowloris cut after at most "
        f"{max(s for _, s in slow_closes):.1f} s; handler threads at most {peaks['threads']} "
        f"(cap {MAX_CONNECTIONS}); RSS +{(peaks['rss'] - rss_before) / 2**20:.0f} MiB"
    )
    print("\nserver under load:", figures)

    # every patient request answered exactly once, with its own seed
    assert set(answers) == expected and all(n == 1 for n in answers.values())
    # every request that joined the queue was sampled, dropped for its gone client, timed out, or refused as
    # the server stopped
    ended = counts["sampled"] + counts["abandoned"] + counts["timed_out"] + counts["refused_stopping"]
    assert counts["queued"] == ended
    assert counts["timed_out"] == 0 and ok <= counts["sampled"] <= ok + abandoned_sent - counts["abandoned"]
    assert counts["abandoned"] > 0
    # slow clients were cut at the deadline (the trickle alone would take 40 s)
    assert all(a.startswith(b"HTTP/1.1 408") and s < REQUEST_TIMEOUT + 2 for a, s in slow_closes)
    assert not caplog.records, caplog.text  # no failure of the server itself
    # responsive throughout, bounded threads and memory
    assert max(health_latencies) < 2.5
    assert peaks["threads"] <= MAX_CONNECTIONS
    assert peaks["rss"] - rss_before < 300 * 2**20
