"""Many concurrent downloads from the test lab's HTTP server, for the scale
tests (tests/integration/scale.rs) and `cargo xtask bench --scale`.

Usage: HOST PORT CONNECTIONS WARM_SECS WINDOW_SECS OUT

Opens CONNECTIONS downloads (64 at a time, so the server's accept queue is
not overrun), waits until WARM_SECS after the start, counts each
connection's bytes for WINDOW_SECS, and writes to OUT (a file: the report
is too big for a pipe its reader drains only after the exit) a JSON object:
"window" (bytes per connection in the window), "opened" and "first" (when
each connected and got its first byte, in seconds from the start, null if
never) and "failures" (connections that could not open; "failed" holds the
first few errors). Exits without closing anything: the run's teardown does.
"""
import asyncio, json, os, resource, sys, time

host, port, n, warm, secs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, n + 256))
counts = [0] * n
opened = [None] * n
first = [None] * n
failed = []
async def one(i, start):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError as e:
        failed.append(str(e)); return
    opened[i] = time.monotonic() - start
    # A terabyte: no download ends within the window.
    w.write(b"GET /1099511627776 HTTP/1.1\r\nHost: lab\r\n\r\n")
    while True:
        data = await r.read(65536)
        if not data:
            return
        if first[i] is None:
            first[i] = time.monotonic() - start
        counts[i] += len(data)
async def main():
    start = time.monotonic()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i, start)))
        if i % 64 == 63:
            await asyncio.sleep(0.02)
    await asyncio.sleep(max(0, warm - (time.monotonic() - start)))
    before = list(counts)
    await asyncio.sleep(secs)
    after = list(counts)
    with open(out, "w") as f:
        json.dump({"window": [a - b for a, b in zip(after, before)], "first": first,
                   "opened": opened, "failed": failed[:5], "failures": len(failed)}, f)
    os._exit(0)
asyncio.run(main())
