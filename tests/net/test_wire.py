"""The wire format: round trips, bit-packing, chunking, and strict parsing of peer bytes."""

import contextlib
import random
import struct

import numpy as np
import pytest

from privkeras.errors import PartyError, WireError
from privkeras.net import wire
from privkeras.net.wire import Frame, WireLimits

SMALL = WireLimits(chunk_bytes=1024, max_frame_bytes=1 << 20, max_meta_bytes=256, max_tensors=8)


def message(*tensors, **meta):
    return Frame(wire.MESSAGE, "job-1", 7, "p0", "p1", "", meta, list(tensors))


def roundtrip(frame, limits=wire.DEFAULT_LIMITS):
    return wire.decode_chunks(wire.encode(frame, limits), limits)


@pytest.mark.parametrize(
    "dtype", ["int64", "int32", "uint8", "int8", "uint64", "float16", "float32", "float64"]
)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 0, 3), (2, 3, 4, 5)])
def test_every_whitelisted_dtype_and_shape_round_trips_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    back = roundtrip(message(array)).tensors[0]
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    assert back.tobytes() == array.tobytes()


def test_ring_elements_keep_every_bit():
    array = np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], np.int64)
    np.testing.assert_array_equal(roundtrip(message(array)).tensors[0], array)


def test_header_fields_and_meta_round_trip():
    frame = Frame(
        wire.REQUEST, "j" * 128, 2**63 - 1, "p0", "dealer", "train", {"a": [1, 2.5, "x"], "b": None}
    )
    back = roundtrip(frame)
    assert (back.kind, back.job, back.round, back.sender, back.receiver, back.method) == (
        wire.REQUEST, "j" * 128, 2**63 - 1, "p0", "dealer", "train",
    )  # fmt: skip
    assert back.meta == {"a": [1, 2.5, "x"], "b": None}


def test_big_endian_and_non_contiguous_tensors_arrive_as_little_endian_values():
    big_endian = np.arange(6, dtype=">i8").reshape(2, 3)
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    back = roundtrip(message(big_endian, strided)).tensors
    np.testing.assert_array_equal(back[0], big_endian)
    np.testing.assert_array_equal(back[1], strided)
    assert back[0].dtype == np.dtype("<i8")


def test_received_tensors_are_writable():
    back = roundtrip(message(np.arange(4))).tensors[0]
    back[0] = 99
    assert back[0] == 99


def test_bool_tensors_travel_packed_eight_to_a_byte():
    bits = np.random.default_rng(1).integers(0, 2, 1000).astype(bool)
    plain = wire.encode(message(np.zeros(1000, np.uint8)))
    packed = wire.encode(message(bits))
    assert len(plain[0]) - len(packed[0]) == 1000 - 128  # 125 bytes, padded to 8
    np.testing.assert_array_equal(wire.decode_chunks(packed).tensors[0], bits)


def test_bits_packs_integer_tensors_and_gives_back_their_dtype():
    values = np.random.default_rng(2).integers(0, 2, (3, 17)).astype(np.int64)
    chunks = wire.encode(message(wire.bits(values)))
    plain = wire.encode(message(values))
    assert len(plain[0]) - len(chunks[0]) == 408 - 8  # 51 bits: 7 bytes, padded to 8
    back = wire.decode_chunks(chunks).tensors[0]
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, values)


def test_bits_refuses_values_other_than_zero_and_one():
    with pytest.raises(WireError, match="0s and 1s"):
        wire.bits(np.array([0, 1, 2]))
    with pytest.raises(WireError, match="integer or bool"):
        wire.bits(np.array([0.5]))


def test_large_frames_are_cut_into_chunks_and_reassembled():
    array = np.arange(10_000, dtype=np.int64)
    chunks = wire.encode(message(array), SMALL)
    assert len(chunks) > 70
    assert max(len(c) for c in chunks) <= SMALL.chunk_bytes + wire.CHUNK_HEADER_BYTES
    np.testing.assert_array_equal(wire.decode_chunks(chunks, SMALL).tensors[0], array)


def test_wire_error_is_a_party_error_and_a_value_error():
    assert issubclass(WireError, PartyError) and issubclass(WireError, ValueError)


@pytest.mark.parametrize(
    "frame, match",
    [
        (message(np.array(["a"], dtype=object)), "dtype in"),
        (message(np.zeros(2, np.complex64)), "dtype in"),
        (message(np.zeros((1,) * 33)), "at most 32 dimensions"),
        (message(x=float("nan")), "JSON-serializable"),
        (message(x=object()), "JSON-serializable"),
        (Frame(wire.MESSAGE, meta=[1]), "meta to be a dict"),
        (Frame(99), "frame kind"),
        (Frame(wire.MESSAGE, round=-1), "round in"),
        (Frame(wire.MESSAGE, job="j" * 129), "at most 128 bytes"),
        (Frame(wire.MESSAGE, sender="a\nb"), "printable"),
        (Frame(wire.MESSAGE, sender=3), "to be a string"),
    ],
)
def test_encoding_refuses_what_the_wire_cannot_carry(frame, match):
    with pytest.raises(WireError, match=match):
        wire.encode(frame)


def test_encoding_refuses_frames_and_meta_over_the_limits():
    with pytest.raises(WireError, match="max_frame_bytes"):
        wire.encode(message(np.zeros(1 << 18)), SMALL)
    with pytest.raises(WireError, match="meta of at most 256 bytes"):
        wire.encode(message(text="x" * 300), SMALL)
    with pytest.raises(WireError, match="at most 8 tensors"):
        wire.encode(message(*[np.zeros(1)] * 9), SMALL)


def test_limits_refuse_nonsense_values():
    with pytest.raises(ValueError, match="chunk_bytes"):
        WireLimits(chunk_bytes=10)
    with pytest.raises(ValueError, match="positive integer"):
        WireLimits(max_tensors=0)


# ----------------------------------------------------------------------------- strict decoding

VALID = b"".join(
    wire.encode_frame(message(np.arange(3), np.array([True, False, True]), step="mul"))
)


def test_every_truncation_of_a_valid_frame_is_a_wire_error():
    for end in range(len(VALID)):
        with pytest.raises(WireError):
            wire.decode(VALID[:end])


def test_trailing_bytes_are_refused():
    with pytest.raises(WireError, match="end after its last tensor"):
        wire.decode(VALID + bytes(8))


def _patched(offset, fmt, value, data=VALID):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


# frame header: magic 0, version 4, kind 5, flags 6, round 8, job_len 16, sender 18, receiver 19,
# method 20, reserved 22, meta_len 24, n_tensors 28
@pytest.mark.parametrize(
    "data, match",
    [
        (b"XXXX" + VALID[4:], "starting with b'PKF1'"),
        (_patched(4, "<B", 2), "version"),
        (_patched(5, "<B", 0), "kind"),
        (_patched(6, "<H", 1), "flags"),
        (_patched(8, "<Q", 2**63), "round"),
        (_patched(16, "<H", 129), "job length"),
        (_patched(18, "<B", 64), "sender length"),
        (_patched(24, "<I", 1 << 30), "meta_len"),
        (_patched(28, "<I", 1 << 30), "n_tensors"),
        (_patched(28, "<I", 3), "tensor 2 dtype code"),  # reads payload bytes as a header
    ],
)
def test_header_fields_out_of_range_are_wire_errors_naming_the_field(data, match):
    with pytest.raises(WireError, match=match):
        wire.decode(data)


def _tensor_offset(data=VALID):
    """Byte offset of tensor 0's descriptor in VALID."""
    (job, sender, receiver, method, _, meta) = struct.unpack_from("<HBBHHI", data, 16)
    head = 32 + job + sender + receiver + method + meta
    return head + (-head % 8)


def test_tensor_descriptors_are_checked():
    t0 = _tensor_offset()
    with pytest.raises(WireError, match="dtype code"):
        wire.decode(_patched(t0, "<B", 42))
    with pytest.raises(WireError, match="flags"):
        wire.decode(_patched(t0 + 1, "<B", 2))
    with pytest.raises(
        WireError, match="packing"
    ):  # int64 tensor 0 marked packed is fine; float is not
        wire.decode(_patched(t0, "<B", 9, _patched(t0 + 1, "<B", 1)))
    with pytest.raises(WireError, match="to carry 24 bytes"):
        wire.decode(_patched(t0 + 8, "<Q", 25))
    with pytest.raises(WireError, match="to carry"):  # a shape that does not match the bytes
        wire.decode(_patched(t0 + 16, "<Q", 2**40))


def test_bool_tensors_must_be_packed_and_padding_bits_zero():
    t1 = _tensor_offset() + 24
    with pytest.raises(WireError, match="packing"):
        wire.decode(_patched(t1 + 1, "<B", 0))
    bits_byte = len(VALID) - 8  # the packed bool tensor's one byte, then zero padding
    with pytest.raises(WireError, match="padding bits"):
        wire.decode(_patched(bits_byte, "<B", 0b1000_0101))
    with pytest.raises(WireError, match="zero padding"):
        wire.decode(_patched(bits_byte + 1, "<B", 1))


def test_unpacked_sizes_are_bounded_too():
    limits = WireLimits(max_frame_bytes=4096)
    frame = b"".join(wire.encode_frame(message(wire.bits(np.zeros(1000, np.int64))), limits))
    with pytest.raises(WireError, match="unpack to at most"):
        wire.decode(frame, limits)


def test_text_and_meta_are_checked():
    meta_at = 32 + 5 + 2 + 2  # job "job-1", sender "p0", receiver "p1", no method
    with pytest.raises(WireError, match="UTF-8"):
        wire.decode(VALID[:32] + b"\xff" + VALID[33:])
    with pytest.raises(WireError, match="JSON object"):
        wire.decode(VALID[:meta_at] + b"[" + VALID[meta_at + 1 :])


# ----------------------------------------------------------------------------- chunks


def _chunks():
    return wire.encode(message(np.arange(1000, dtype=np.int64)), SMALL)


def test_chunks_out_of_order_missing_or_extra_are_refused():
    chunks = _chunks()
    with pytest.raises(WireError, match="chunk 1 next"):
        wire.decode_chunks([chunks[0], chunks[2]], SMALL)
    with pytest.raises(WireError, match="chunk 0 next"):
        wire.decode_chunks(chunks[1:], SMALL)
    with pytest.raises(WireError, match="chunks of the frame"):
        wire.decode_chunks(chunks[:-1], SMALL)
    with pytest.raises(WireError, match="no chunk after the last"):
        wire.decode_chunks([*chunks, chunks[-1]], SMALL)


def test_chunk_headers_are_checked_against_the_first_chunk_and_the_limits():
    chunks = _chunks()
    header = struct.Struct("<4sIIQ")
    _, _, count, total = header.unpack_from(chunks[1])
    with pytest.raises(WireError, match="every chunk of a frame"):
        wire.decode_chunks(
            [chunks[0], header.pack(b"PKC1", 1, count, total + 1) + chunks[1][20:]], SMALL
        )
    with pytest.raises(WireError, match="max_frame_bytes"):
        wire.decode_chunks([header.pack(b"PKC1", 0, 1, 1 << 40) + b"x"], SMALL)
    with pytest.raises(WireError, match="chunks for a frame"):
        wire.decode_chunks([header.pack(b"PKC1", 0, 1, 5000) + b"x"], SMALL)
    with pytest.raises(WireError, match="bytes of frame per chunk"):
        wire.decode_chunks([header.pack(b"PKC1", 0, 2, 2000) + bytes(1500)], SMALL)
    with pytest.raises(WireError, match="exactly total"):
        wire.decode_chunks([header.pack(b"PKC1", 0, 1, 100) + bytes(50)], SMALL)
    with pytest.raises(WireError, match="at least 20 bytes"):
        wire.decode_chunks([b"PKC1"], SMALL)
    with pytest.raises(WireError, match="starting with b'PKC1'"):
        wire.decode_chunks([b"NOPE" + chunks[0][4:]], SMALL)


def test_the_memory_reservation_happens_before_allocation():
    seen = []

    def reserve(nbytes):
        seen.append(nbytes)
        raise PartyError("over budget")

    assembler = wire.ChunkAssembler(SMALL, reserve=reserve)
    with pytest.raises(PartyError, match="over budget"):
        assembler.add(_chunks()[0])
    assert seen and assembler.total == 0


# ----------------------------------------------------------------------------- fuzz


def _mutations(rng, data):
    """Random damage of a few kinds: flips, overwrites, truncation, insertion, garbage."""
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        at = rng.randrange(len(data))
        data[at : at + 8] = rng.randbytes(8)
    elif kind == 2:
        del data[rng.randrange(len(data)) :]
    elif kind == 3:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 4:
        data = bytearray(rng.randbytes(rng.randint(0, 200)))
    else:  # a header field set to an extreme value
        at = rng.randrange(0, 32, 2)
        data[at : at + 2] = b"\xff\xff"
    return bytes(data)


def _random_frame(rng):
    makers = [
        lambda: np.arange(rng.randint(0, 50), dtype=np.int64),
        lambda: np.ones((rng.randint(0, 4), rng.randint(0, 4)), np.float32),
        lambda: np.zeros(rng.randint(0, 30), bool),
        lambda: wire.bits(np.ones(rng.randint(0, 20), np.uint8)),
    ]
    tensors = [rng.choice(makers)() for _ in range(rng.randint(0, 4))]
    meta = {"step": "x" * rng.randint(0, 40)} if rng.random() < 0.5 else {}
    return Frame(
        rng.choice(list(wire.KINDS)), "job", rng.randint(0, 99), "p0", "p1", "m", meta, tensors
    )


def test_fuzz_random_and_mutated_frames_decode_or_raise_wire_error_only():
    rng = random.Random(12345)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(600):
        data = _mutations(rng, b"".join(wire.encode_frame(_random_frame(rng))))
        try:
            frame = wire.decode(data, SMALL)
        except WireError:
            outcomes["refused"] += 1
        else:
            assert frame.kind in wire.KINDS and all(
                isinstance(t, np.ndarray) for t in frame.tensors
            )
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 400  # most damage is caught, and nothing else was raised


def test_fuzz_mutated_chunk_streams_raise_wire_error_only():
    rng = random.Random(54321)
    for _ in range(300):
        chunks = wire.encode(_random_frame(rng), SMALL) if rng.random() < 0.3 else _chunks()
        at = rng.randrange(len(chunks))
        chunks[at] = _mutations(rng, chunks[at])
        with contextlib.suppress(WireError):
            wire.decode_chunks(chunks, SMALL)
