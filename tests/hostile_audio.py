"""Recordings whose container claims more audio than they hold, built on the spot from the
bytes audio_fixtures encodes: an inflated Ogg granule (Opus with empty DTX packets, Vorbis), an
mp3 Info/Xing frame count, a Matroska Duration, mp4 mvhd/mdhd durations, a WAV data size and
a FLAC STREAMINFO total. `held_seconds` says what the packets or samples really hold, so a test
can tell a decoded second from a claimed one.

Imported by pytest and by the fuzz test's memory-capped child, so it needs only numpy,
soundfile and PyAV.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from audio_fixtures import encode

OGG_HEADER = 27  # "OggS", version, flags, granule, serial, sequence, CRC, segment count
OPUS_RATE = 48000
# Samples per Opus frame by the TOC byte's configuration number (RFC 6716 section 3.1).
OPUS_FRAME_SAMPLES = ([480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4)


@dataclass(frozen=True)
class Claiming:
    """A hostile file: its bytes, what it holds in seconds, and the name of the trick."""
    name: str
    audio: bytes
    held_seconds: float


def ogg_crc(data: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, MSB first), written out plainly:
    an independent check of the handler's table-free version."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_pages(data: bytes) -> list[bytes]:
    """The whole pages of an Ogg file, in order."""
    pages, pos = [], 0
    while pos + OGG_HEADER <= len(data) and data.startswith(b"OggS", pos):
        table_end = pos + OGG_HEADER + data[pos + 26]
        end = table_end + sum(data[pos + OGG_HEADER:table_end])
        pages.append(data[pos:end])
        pos = end
    return pages


def ogg_packets(page: bytes) -> list[bytes]:
    """The packets that end on `page` (a packet continued onto the next page is not split
    here: the builders below never make one)."""
    table = page[OGG_HEADER:OGG_HEADER + page[26]]
    body, packets, current, pos = page[OGG_HEADER + len(table):], [], b"", 0
    for size in table:
        current += body[pos:pos + size]
        pos += size
        if size < 255:
            packets.append(current)
            current = b""
    return packets


def ogg_page(template: bytes, packets: list[bytes], granule: int, sequence: int,
             flags: int) -> bytes:
    """A page with `template`'s serial number holding `packets`, its checksum recomputed."""
    table = b"".join(bytes([255] * (len(p) // 255) + [len(p) % 255]) for p in packets)
    header = (b"OggS" + bytes([0, flags]) + struct.pack("<q", granule) + template[14:18]
              + struct.pack("<I", sequence) + bytes(4) + bytes([len(table)]))
    page = bytearray(header + table + b"".join(packets))
    page[22:26] = struct.pack("<I", ogg_crc(bytes(page)))
    return bytes(page)


def opus_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) an Opus packet decodes to, from its TOC byte (RFC 6716 3.2)."""
    if not packet:
        return 0
    per_frame = OPUS_FRAME_SAMPLES[packet[0] >> 3]
    code = packet[0] & 0x03
    if code == 3:  # a frame count byte follows
        return per_frame * (packet[1] & 0x3F if len(packet) > 1 else 0)
    return per_frame * (1 if code == 0 else 2)


def restream_opus(data: bytes, packets_per_page: int, granules, transform) -> bytes:
    """The Ogg Opus file re-paged: its header pages kept, its audio packets (each passed through
    `transform(index, packet)`) `packets_per_page` to a page, page k's granule position
    `granules(k, honest_granule, is_last)`."""
    pages = ogg_pages(data)
    head, audio = pages[:2], [p for page in pages[2:] for p in ogg_packets(page)]
    audio = [transform(i, p) for i, p in enumerate(audio)]
    out, honest = list(head), 0
    chunks = [audio[i:i + packets_per_page] for i in range(0, len(audio), packets_per_page)]
    for k, chunk in enumerate(chunks):
        honest += sum(opus_samples(p) for p in chunk)
        last = k == len(chunks) - 1
        out.append(ogg_page(head[0], chunk, granules(k, honest, last), len(out),
                            0x04 if last else 0))
    return b"".join(out)


def opus_pre_skip(data: bytes) -> int:
    return struct.unpack("<H", ogg_packets(ogg_pages(data)[0])[0][10:12])[0]


def opus_dtx(channels: int, dtx_every: int, inflate: float, every_page: bool,
             per_page: int = 1) -> Claiming:
    """Ogg Opus whose every `dtx_every`-th packet is empty (a TOC byte alone: DTX, decoded as
    concealment) and whose granule (the last page's, or every page's) claims `inflate` times
    the audio its packets hold."""
    data = encode("ogg-opus", channels, 1.0)

    def dtx(index: int, packet: bytes) -> bytes:
        return bytes([packet[0] & 0xFC]) if index % dtx_every == 0 else packet

    def granule(k: int, honest: int, last: bool) -> int:
        return int(honest * inflate) if (last or every_page) else honest

    hostile = restream_opus(data, per_page, granule, dtx)
    packets = [p for page in ogg_pages(hostile)[2:] for p in ogg_packets(page)]
    held = sum(opus_samples(p) for p in packets) - opus_pre_skip(data)
    where = "every page" if every_page else "last page"
    return Claiming(f"ogg-opus/{channels}ch DTX 1 in {dtx_every}, {where} x{inflate:g}, "
                    f"{per_page} packet(s) a page", hostile, held / OPUS_RATE)


def vorbis(channels: int, inflate: float, every_page: bool) -> Claiming:
    """Ogg Vorbis whose granule (the last page's, or every page's) is `inflate` times honest."""
    data = encode("ogg-vorbis", channels, 1.0)
    pages = ogg_pages(data)
    out = []
    for k, page in enumerate(pages):
        granule = struct.unpack("<q", page[6:14])[0]
        if k >= 2 and granule > 0 and (every_page or k == len(pages) - 1):
            granule = int(granule * inflate)
        out.append(ogg_page(page, ogg_packets(page), granule, k, page[5]))
    where = "every page" if every_page else "last page"
    return Claiming(f"ogg-vorbis/{channels}ch {where} x{inflate:g}", b"".join(out), 1.0)


def mp3_frames_claim(inflate: float) -> Claiming:
    """mp3 whose Info (LAME/Xing) frame count claims `inflate` times the frames it holds."""
    data = bytearray(encode("mp3", 1, 1.0))
    tag = max(data.find(b"Info"), data.find(b"Xing"))
    if tag < 0 or not data[tag + 7] & 0x01:
        raise ValueError("the encoder wrote no Info frame count")
    frames = struct.unpack(">I", data[tag + 8:tag + 12])[0]
    data[tag + 8:tag + 12] = struct.pack(">I", int(frames * inflate))
    return Claiming(f"mp3 Info frames x{inflate:g}", bytes(data), 1.0)


def webm_duration_claim(inflate: float) -> Claiming:
    """webm/opus whose Matroska Duration (element 0x4489, a float) is `inflate` times honest."""
    data = bytearray(encode("webm-opus", 1, 1.0))
    pos = data.find(b"\x44\x89")
    size = data[pos + 2] & 0x0F  # a 1-byte EBML size: 0x84 or 0x88
    fmt = ">d" if size == 8 else ">f"
    value = struct.unpack(fmt, data[pos + 3:pos + 3 + size])[0]
    data[pos + 3:pos + 3 + size] = struct.pack(fmt, value * inflate)
    return Claiming(f"webm Duration x{inflate:g}", bytes(data), 1.0)


def mp4_duration_claim(inflate: float) -> Claiming:
    """mp4/aac whose mvhd and mdhd durations (version 0 boxes) are `inflate` times honest."""
    data = bytearray(encode("mp4-aac", 1, 1.0))
    for box in (b"mvhd", b"mdhd"):
        pos = data.find(box)
        if data[pos + 4] != 0:
            raise ValueError(f"{box.decode()} is not a version-0 box")
        at = pos + 4 + 4 + 4 + 4 + 4  # version/flags, creation, modification, timescale
        duration = struct.unpack(">I", data[at:at + 4])[0]
        data[at:at + 4] = struct.pack(">I", min(int(duration * inflate), 2**32 - 1))
    return Claiming(f"mp4 mvhd/mdhd duration x{inflate:g}", bytes(data), 1.0)


def wav_size_claim(inflate: float) -> Claiming:
    """PCM WAV whose data chunk (and RIFF) size claim `inflate` times the bytes that follow."""
    data = bytearray(encode("wav", 1, 1.0))
    pos = data.find(b"data")
    size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
    claimed = min(int(size * inflate), 2**32 - 64)
    data[pos + 4:pos + 8] = struct.pack("<I", claimed)
    data[4:8] = struct.pack("<I", min(claimed + pos, 2**32 - 1))
    return Claiming(f"wav data size x{inflate:g}", bytes(data), 1.0)


def flac_total_claim(inflate: float) -> Claiming:
    """FLAC whose STREAMINFO total sample count is `inflate` times the samples it holds."""
    data = bytearray(encode("flac", 1, 1.0))
    start = 8 + 10  # "fLaC", block header, min/max block and frame sizes
    packed = int.from_bytes(data[start:start + 8], "big")
    total = packed & (2**36 - 1)
    packed = packed - total + min(int(total * inflate), 2**36 - 1)
    data[start:start + 8] = packed.to_bytes(8, "big")
    return Claiming(f"flac STREAMINFO total x{inflate:g}", bytes(data), 1.0)


def every_claim() -> list[Claiming]:
    """One of each trick, at a few sizes: the parametrised test's list."""
    return [
        opus_dtx(1, 2, 2.0, every_page=False), opus_dtx(2, 3, 2.0, every_page=False),
        opus_dtx(1, 2, 3.0, every_page=True), opus_dtx(2, 1000, 3.0, every_page=True),
        opus_dtx(1, 2, 2.0, every_page=True, per_page=10),
        vorbis(1, 2.0, every_page=False), vorbis(2, 3.0, every_page=True),
        mp3_frames_claim(2.0), mp3_frames_claim(50.0),
        webm_duration_claim(2.0), mp4_duration_claim(2.0),
        wav_size_claim(2.0), flac_total_claim(2.0),
    ]


def is_ogg_opus(audio: bytes) -> bool:
    """Whether `audio` opens with an Ogg page whose first packet is an OpusHead."""
    return (audio.startswith(b"OggS") and len(audio) > 26
            and audio[OGG_HEADER + audio[26]:].startswith(b"OpusHead"))


def decoded_seconds(audio: bytes) -> float:
    """The seconds FFmpeg decodes from `audio`, whatever its header says."""
    import av

    with av.open(io.BytesIO(audio)) as container:
        stream = container.streams.audio[0]
        frames = sum(frame.samples for frame in container.decode(stream))
        return frames / stream.codec_context.sample_rate
