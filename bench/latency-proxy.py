#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a fixed one-way delay to every byte, in both directions,
so that a loopback server looks like one a round-trip time away. Data is forwarded as it
arrives, each chunk DELAY_MS after it was read. A new connection pays a round trip for its
handshake too (its first bytes wait), as over a real link. Bandwidth is not limited, unless
RATE_MBPS is set: then every connection's bytes towards the server share one link of that
many MB/s (10^6 bytes), as an uplink does; the answers stay unlimited.

    [RATE_MBPS=N] bench/latency-proxy.py LISTEN_PORT TARGET_PORT DELAY_MS [PORT_FILE]

With LISTEN_PORT 0 the kernel picks a port; it is written to PORT_FILE (if given) once the
proxy listens. Stops on SIGTERM or SIGINT.
"""

import asyncio
import os
import signal
import sys


class Link:
    """One link shared by every connection: a chunk goes once the ones before it have."""

    def __init__(self, bytes_per_second):
        self.rate = bytes_per_second
        self.free_at = 0.0

    async def carry(self, size):
        loop = asyncio.get_running_loop()
        self.free_at = max(self.free_at, loop.time()) + size / self.rate
        wait = self.free_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)


RATE = float(os.environ.get("RATE_MBPS") or 0) * 1e6
UPLINK = Link(RATE) if RATE > 0 else None


async def pump(reader, writer, delay, link=None):
    """Copies reader to writer, each chunk `delay` seconds after it was read (and after the
    link, if any, has carried it)."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            if link is not None:
                await link.carry(len(data))
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    sender = asyncio.ensure_future(forward())
    try:
        while True:
            data = await reader.read(256 * 1024)
            queue.put_nowait((loop.time() + delay, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def handle(client_reader, client_writer, target_port, delay):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    try:
        # The handshake: a client a round trip away sends its first bytes one RTT after connect.
        await asyncio.sleep(2 * delay)
        await asyncio.gather(
            pump(client_reader, server_writer, delay, UPLINK),
            pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )
    except asyncio.CancelledError:
        pass
    for w in (client_writer, server_writer):
        w.close()


async def main():
    listen_port, target_port, delay_ms = (int(a) for a in sys.argv[1:4])
    delay = delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target_port, delay), "127.0.0.1", listen_port, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    if len(sys.argv) > 4:
        with open(sys.argv[4] + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.rename(sys.argv[4] + ".tmp", sys.argv[4])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
