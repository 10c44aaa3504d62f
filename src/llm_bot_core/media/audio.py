"""How long a recording is, read from its container without decoding it.

Telegram voice messages are OGG/Opus; audio files are often MP4/M4A, video notes MP4; tools
and tests send WAV. These three are read here (a few dozen lines each, no dependency); any
other container gives None and the caller relies on a duration the client declares.
"""

from __future__ import annotations

import struct

OPUS_RATE = 48_000  # Opus granule positions always count 48 kHz samples (RFC 7845, 4)


class AudioUnreadable(ValueError):
    """The bytes claim a known container but do not hold a readable one."""


def audio_duration(data: bytes) -> float | None:
    """Seconds of audio in `data`; None when the container is not one this module reads.

    Raises AudioUnreadable when the container is recognised but broken or empty."""
    if data.startswith(b"OggS"):
        return ogg_duration(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return wav_duration(data)
    if data[4:8] == b"ftyp":
        return mp4_duration(data)
    return None


def ogg_duration(data: bytes) -> float:
    """Duration of the first logical stream of an OGG file (Opus or Vorbis).

    Walks every page header (a 20 MB file has a few thousand), so a truncated or corrupt file
    is refused rather than measured by whatever its last bytes say."""
    offset = 0
    serial: int | None = None
    rate = 0
    pre_skip = 0
    last_granule = -1
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS" or offset + 27 > len(data):
            raise AudioUnreadable(f"not an OGG page at byte {offset}")
        granule, page_serial = struct.unpack_from("<qI", data, offset + 6)
        segments = data[offset + 26]
        table = data[offset + 27 : offset + 27 + segments]
        if len(table) < segments:
            raise AudioUnreadable("truncated OGG page header")
        body_start = offset + 27 + segments
        body_end = body_start + sum(table)
        if body_end > len(data):
            raise AudioUnreadable("truncated OGG page")
        if serial is None:
            serial = page_serial
            rate, pre_skip = _ogg_codec(data[body_start:body_end])
        elif page_serial == serial and granule >= 0:
            last_granule = granule
        offset = body_end
    if last_granule < 0:
        raise AudioUnreadable("OGG stream without audio pages")
    return max(last_granule - pre_skip, 0) / rate


def _ogg_codec(first_packet: bytes) -> tuple[int, int]:
    """(sample rate of the granule positions, samples to skip) from the stream's header."""
    if first_packet.startswith(b"OpusHead") and len(first_packet) >= 19:
        return OPUS_RATE, struct.unpack_from("<H", first_packet, 10)[0]
    if first_packet.startswith(b"\x01vorbis") and len(first_packet) >= 16:
        rate = struct.unpack_from("<I", first_packet, 12)[0]
        if rate > 0:
            return rate, 0
    raise AudioUnreadable("OGG stream is neither Opus nor Vorbis")


def wav_duration(data: bytes) -> float:
    """Duration of a RIFF/WAVE file: its data chunk over the byte rate of its fmt chunk."""
    offset = 12
    byte_rate = 0
    while offset + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, offset)
        if chunk == b"fmt " and size >= 16:
            byte_rate = struct.unpack_from("<I", data, offset + 16)[0]
        elif chunk == b"data":
            if byte_rate <= 0:
                raise AudioUnreadable("WAV data before a valid fmt chunk")
            # A streamed WAV may declare a larger size than it holds: count what is there.
            return min(size, len(data) - offset - 8) / byte_rate
        offset += 8 + size + (size & 1)
    raise AudioUnreadable("WAV without a data chunk")


def mp4_duration(data: bytes) -> float:
    """Duration of an MP4/M4A file from its movie header (moov/mvhd)."""
    moov = _box(data, 0, len(data), b"moov")
    if moov is None:
        raise AudioUnreadable("MP4 without a moov box")
    mvhd = _box(data, *moov, b"mvhd")
    if mvhd is None:
        raise AudioUnreadable("MP4 without a movie header")
    start, end = mvhd
    version = data[start]
    if version == 1 and end - start >= 32:
        timescale, duration = struct.unpack_from(">IQ", data, start + 20)
    elif end - start >= 20:
        timescale, duration = struct.unpack_from(">II", data, start + 12)
    else:
        raise AudioUnreadable("MP4 movie header too short")
    if timescale <= 0:
        raise AudioUnreadable("MP4 movie header without a timescale")
    return float(duration / timescale)


def _box(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, payload end) of the first box `kind` among the boxes in [start, end)."""
    offset = start
    while offset + 8 <= end:
        size, name = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1 and offset + 16 <= end:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        elif size == 0:
            size = end - offset
        if size < header:
            raise AudioUnreadable("MP4 box with an impossible size")
        if name == kind:
            return offset + header, min(offset + size, end)
        offset += size
    return None
