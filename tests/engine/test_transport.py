"""MqttStream (engine/transport.py): the connection object the broker's TCP listeners use, on real sockets."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from mqtt_guard.engine.transport import LIMIT, MqttStream, TcpReader, TcpWriter


async def serving(serve):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MqttStream(loop, serve), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_bytes_arrive_in_order_in_reads_of_at_most_n_and_eof_reads_empty():
    async def main():
        got: list[bytes] = []
        done = asyncio.Event()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            while True:
                data = await stream.read(5)
                assert len(data) <= 5
                if not data:
                    break
                got.append(data)
            writer.write(b"bye")
            await writer.drain()
            done.set()

        server, port = await serving(serve)
        r, w = await client(port)
        for part in (b"hello ", b"wor", b"ld and more"):
            w.write(part)
            await w.drain()
            await asyncio.sleep(0.01)
        w.write_eof()  # half-close: the server still writes its answer
        await asyncio.wait_for(done.wait(), 5)
        assert await asyncio.wait_for(r.read(), 5) == b"bye"
        assert b"".join(got) == b"hello world and more"
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_reading_pauses_when_unread_bytes_pile_up_and_nothing_is_lost():
    async def main():
        streams: list[MqttStream] = []
        release = asyncio.Event()
        received = bytearray()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            streams.append(stream)
            await release.wait()
            while True:
                data = await stream.read(65536)
                if not data:
                    break
                received.extend(data)
            stream.close()

        server, port = await serving(serve)
        payload = bytes(range(256)) * 4096 * 4  # 4 MiB: far more than the pause mark
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        sender = loop.create_task(loop.sock_sendall(sock, payload))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if streams and not streams[0].transport.is_reading():
                break
        stream = streams[0]
        assert not stream.transport.is_reading()  # paused: the client's sends block instead of broker memory growing
        assert stream._buffered <= 2 * LIMIT + 262144  # at most one read past the mark
        release.set()
        await asyncio.wait_for(sender, 10)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(500):
            if len(received) == len(payload):
                break
            await asyncio.sleep(0.01)
        assert bytes(received) == payload
        sock.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_drain_raises_once_the_connection_is_lost_and_wait_closed_returns():
    async def main():
        outcome: list[str] = []

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            assert await stream.read(10) == b"x"
            try:  # the client reset the connection: the read says so, as asyncio's StreamReader does
                assert await stream.read(10) == b""
            except ConnectionResetError:
                pass
            try:
                for _ in range(1000):
                    stream.write(b"y" * 65536)
                    await stream.drain()
            except (ConnectionResetError, ConnectionError, OSError) as exc:
                outcome.append(type(exc).__name__)
            await asyncio.wait_for(stream.wait_closed(), 5)

        server, port = await serving(serve)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"x")
        await asyncio.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        for _ in range(300):
            if outcome:
                break
            await asyncio.sleep(0.01)
        assert outcome  # the writer learns the peer is gone instead of buffering forever
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_a_failing_handler_closes_its_connection_and_is_logged(caplog):
    async def main():
        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            raise RuntimeError("boom")

        server, port = await serving(serve)
        r, w = await client(port)
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed by the broker side
        w.close()
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.ERROR, logger="mqtt_guard.broker"):
        asyncio.run(main())
    assert "connection handler failed" in caplog.text
    assert "boom" in caplog.text


@pytest.mark.parametrize("n", [1, 3, 7])
def test_readexactly_collects_across_chunks_and_reports_a_short_stream(n):
    async def main():
        results: list[object] = []
        done = asyncio.Event()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            results.append(await reader.read(n))  # amqtt's adapter API: readexactly underneath
            try:
                await reader.read(100)
            except asyncio.IncompleteReadError as exc:
                results.append(exc.partial)
            done.set()

        server, port = await serving(serve)
        r, w = await client(port)
        for b in b"abcdefgh":
            w.write(bytes((b,)))
            await w.drain()
            await asyncio.sleep(0.005)
        w.write_eof()
        await asyncio.wait_for(done.wait(), 5)
        assert results == [b"abcdefgh"[:n], b"abcdefgh"[n:]]
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


async def serving_after_first_packet(serve, timeout: float = 5.0, max_packet: int = 0):
    """As the broker's listeners: the task starts once the first packet is whole (or at the timeout)."""
    from mqtt_guard.engine.deadlines import Deadlines

    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    server = await loop.create_server(
        lambda: MqttStream(loop, serve, deadlines=deadlines, connect_timeout=timeout, max_packet=max_packet),
        "127.0.0.1",
        0,
    )
    return server, server.sockets[0].getsockname()[1]


CONNECT_PACKET = bytes.fromhex("101000044d5154540402003c000464657631")  # client id "dev1", keep-alive 60


def test_the_task_starts_once_the_first_packet_is_whole_and_finds_it_buffered():
    async def main():
        seen: list[tuple[bool, bool, bytes]] = []
        started = asyncio.Event()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            seen.append((stream.first_ready, stream.timed_out, stream.take_buffered()))
            started.set()
            stream.close()

        server, port = await serving_after_first_packet(serve)
        r, w = await client(port)
        w.write(CONNECT_PACKET[:7])  # a CONNECT cut short: no task yet
        await w.drain()
        await asyncio.sleep(0.2)
        assert not started.is_set()
        w.write(CONNECT_PACKET[7:] + b"\xc0\x00")  # the rest, and a PINGREQ behind it
        await asyncio.wait_for(started.wait(), 5)
        assert seen == [(True, False, CONNECT_PACKET + b"\xc0\x00")]
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_a_socket_that_sends_no_whole_packet_gets_its_task_at_the_connect_timeout():
    async def main():
        seen: list[tuple[bool, bool, float]] = []
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            seen.append((stream.first_ready, stream.timed_out, loop.time()))
            started.set()
            stream.close()

        server, port = await serving_after_first_packet(serve, timeout=0.3)
        t0 = loop.time()
        r, w = await client(port)
        w.write(CONNECT_PACKET[:3])
        await asyncio.wait_for(started.wait(), 5)
        ((first_ready, timed_out, at),) = seen
        assert (first_ready, timed_out) == (False, True)
        assert at - t0 >= 0.3
        assert await asyncio.wait_for(r.read(), 5) == b""  # the handler closed it
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize(
    "first_bytes, why",
    [
        (b"\x30\x05ab", "not a CONNECT: the task reports it without waiting for the rest"),
        (b"\x10\xff\xff\x03", "a CONNECT larger than max_packet"),
        (b"\x10\xff\xff\xff\xff\x01", "a malformed remaining length"),
        (b"", "the peer went away before a CONNECT"),
    ],
)
def test_a_first_packet_whose_fate_is_known_starts_the_task_at_once(first_bytes, why):
    async def main():
        started = asyncio.Event()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            started.set()
            reader._reader.close()

        server, port = await serving_after_first_packet(serve, timeout=30, max_packet=1024)
        r, w = await client(port)
        if first_bytes:
            w.write(first_bytes)
        else:
            w.write_eof()
        await w.drain()
        await asyncio.wait_for(started.wait(), 5)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_take_hands_out_buffered_bytes_none_while_waiting_and_empty_at_eof():
    """The reader's plain-call read (`take`) and its wait (`readable`): what an idle connection is
    suspended on instead of a read coroutine."""

    async def main():
        seen: list[bytes | None] = []
        done = asyncio.Event()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            stream = reader._reader
            while True:
                data = stream.take(4)
                seen.append(data)
                if data is None:
                    await stream.readable()
                    continue
                if not data:
                    break
            done.set()

        server, port = await serving(serve)
        r, w = await client(port)
        w.write(b"abcdef")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write_eof()
        await asyncio.wait_for(done.wait(), 5)
        assert seen[-1] == b""
        got = [d for d in seen if d]
        assert b"".join(got) == b"abcdef" and all(len(d) <= 4 for d in got)
        assert None in seen  # it waited (the server's task starts before the bytes come)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_take_raises_the_error_the_connection_was_lost_with():
    async def main():
        loop = asyncio.get_running_loop()

        async def serve(reader: TcpReader, writer: TcpWriter) -> None:
            return None

        stream = MqttStream(loop, serve)
        assert stream.take(10) is None
        stream.connection_lost(ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError):
            stream.take(10)

    asyncio.run(main())
