"""The worker's frame channel: frames arrive whole however the pipe splits or joins them."""

from __future__ import annotations

import os
import threading

import pytest

from worker import protocol
from worker.channel import Channel

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pipes():
    """(the worker's Channel, the supervisor's write end); every descriptor closed after."""
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    yield Channel(to_worker_r, from_worker_w), to_worker_w
    for fd in (to_worker_r, to_worker_w, from_worker_r, from_worker_w):
        try:
            os.close(fd)
        except OSError:
            pass


def _write_in_thread(fd: int, chunks: list[bytes]) -> threading.Thread:
    def write() -> None:
        for chunk in chunks:
            os.write(fd, chunk)

    writer = threading.Thread(target=write)
    writer.start()
    return writer


def test_a_frame_written_a_byte_at_a_time_arrives_whole(pipes):
    channel, supervisor_end = pipes
    frame = protocol.pack([protocol.CALL, 1, "id", 0, [protocol.RAW_EVENT], b"body"])
    writer = _write_in_thread(supervisor_end, [frame[i:i + 1] for i in range(len(frame))])
    assert channel.receive() == [protocol.CALL, 1, "id", 0, [protocol.RAW_EVENT], b"body"]
    writer.join()


def test_two_frames_in_one_write_are_both_received_without_another_read(pipes):
    channel, supervisor_end = pipes
    os.write(supervisor_end, protocol.pack(["first"]) + protocol.pack(["second"]))
    assert channel.receive() == ["first"]
    # Nothing more is written: the second frame must come from what was already read.
    assert channel.receive() == ["second"]


def test_a_frame_larger_than_one_read_arrives_whole(pipes):
    channel, supervisor_end = pipes
    body = os.urandom(300 * 1024)
    frame = protocol.pack(["big", body]) + protocol.pack(["after"])
    writer = _write_in_thread(supervisor_end, [frame[:70_000], frame[70_000:]])
    assert channel.receive() == ["big", body]
    assert channel.receive() == ["after"]
    writer.join()


def test_end_of_file_is_none(pipes):
    channel, supervisor_end = pipes
    os.write(supervisor_end, protocol.pack(["last"]))
    os.close(supervisor_end)
    assert channel.receive() == ["last"]
    assert channel.receive() is None
