"""CoalescedWrites: what one step of the loop writes reaches the peer whole, in order, once the
step ends; close and write_eof send what is pending first; nothing goes to a closed transport."""

from __future__ import annotations

import asyncio
import socket

from taskd.api.connections import CoalescedWrites


async def _pair() -> tuple[asyncio.Transport, CoalescedWrites, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    return transport, CoalescedWrites(transport, loop), peer


async def _read_until_closed(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(peer, 65536), timeout=5):
        received += chunk
    return received


def test_a_steps_writes_arrive_in_order_after_the_step() -> None:
    async def go() -> None:
        transport, writes, peer = await _pair()
        writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writes.writelines([b"he", b"llo"])
        writes.write(b"")
        assert transport.get_write_buffer_size() == 0  # nothing sent within the step
        await asyncio.sleep(0)  # the step ends: one write
        writes.write(b"!")
        writes.close()  # sends what is pending first
        assert await _read_until_closed(peer) == b"HTTP/1.1 200 OK\r\n\r\nhello!"
        peer.close()

    asyncio.run(go())


def test_write_eof_sends_what_is_pending_first() -> None:
    async def go() -> None:
        transport, writes, peer = await _pair()
        writes.write(b"last words")
        writes.write_eof()
        assert await _read_until_closed(peer) == b"last words"
        transport.close()
        peer.close()

    asyncio.run(go())


def test_a_write_pending_when_the_transport_closes_is_dropped() -> None:
    async def go() -> None:
        transport, writes, peer = await _pair()
        writes.write(b"too late")
        transport.close()  # the connection ends under it (a reset peer, a shutdown)
        await asyncio.sleep(0)
        assert await _read_until_closed(peer) == b""
        peer.close()

    asyncio.run(go())
