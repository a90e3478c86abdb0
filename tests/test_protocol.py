import io
import struct

import pytest

from core.protocol import (
    FRAME_PREFIX,
    Array,
    Discovery,
    ErrorCode,
    Frame,
    JobRequest,
    SemanticError,
    encode_frame_parts,
    read_frame,
)


def roundtrip(frame: Frame, **kwargs) -> Frame:
    data = b"".join(bytes(p) for p in encode_frame_parts(frame))
    return read_frame(io.BytesIO(data).read, **kwargs)


def test_request_roundtrip_keeps_header_and_raw_pixels():
    image = Array("image", "u8", (2, 3, 4), bytes(range(24)))
    mask = Array("mask", "f32", (2, 3, 1), struct.pack("<6f", 0, 0.25, 0.5, 0.75, 1, 0))
    request = JobRequest("harmonize", {"strength": 0.5, "method": "statistics"}, {"image": image, "mask": mask})
    back = JobRequest.from_frame(roundtrip(request.to_frame()))
    assert back.action == "harmonize" and back.params == {"strength": 0.5, "method": "statistics"}
    assert bytes(back.arrays["image"].data) == bytes(range(24))
    assert back.arrays["mask"].shape == (2, 3, 1) and back.arrays["mask"].dtype == "f32"
    assert struct.unpack("<6f", bytes(back.arrays["mask"].data))[1] == 0.25


def test_frame_carries_pixels_without_reencoding():
    payload = bytes(range(256)) * 3
    frame = Frame("result", {"job": "x"}, {"image": Array("image", "u8", (16, 16, 3), payload)})
    parts = encode_frame_parts(frame)
    size = sum(len(p) for p in parts)
    header_len = FRAME_PREFIX.unpack(bytes(parts[0]))[1]
    assert size == FRAME_PREFIX.size + header_len + len(payload)


@pytest.mark.parametrize("dtype,shape,nbytes", [("u8", (2, 2, 3), 11), ("u16", (2, 2), 4), ("f64", (1, 1), 8)])
def test_array_rejects_inconsistent_descriptions(dtype, shape, nbytes):
    with pytest.raises(SemanticError) as info:
        Array("image", dtype, shape, bytes(nbytes))
    assert info.value.code is ErrorCode.bad_input


def test_read_frame_rejects_garbage_and_truncation():
    with pytest.raises(SemanticError, match="magic"):
        read_frame(io.BytesIO(b"HTTP" + bytes(12)).read)
    good = b"".join(bytes(p) for p in encode_frame_parts(Frame("progress", {"fraction": 0.5})))
    with pytest.raises(SemanticError, match="closed"):
        read_frame(io.BytesIO(good[:-3]).read)


def test_read_frame_enforces_payload_limit_before_reading():
    frame = Frame("request", {}, {"image": Array("image", "u8", (10, 10, 1), bytes(100))})
    with pytest.raises(SemanticError) as info:
        roundtrip(frame, max_payload=50)
    assert info.value.code is ErrorCode.payload_too_large


def test_read_frame_returns_none_at_clean_end_of_stream():
    assert read_frame(io.BytesIO(b"").read, eof_ok=True) is None


def test_array_outside_payload_is_rejected():
    frame = Frame("request", {}, {"a": Array("a", "u8", (2, 2), bytes(4))})
    data = bytearray(b"".join(bytes(p) for p in encode_frame_parts(frame)))
    data = data.replace(b'"nbytes":4', b'"nbytes":9')
    with pytest.raises(SemanticError, match="outside"):
        read_frame(io.BytesIO(bytes(data)).read)


def test_error_roundtrip_and_unknown_codes():
    error = SemanticError(ErrorCode.weights_missing, "Weight file x is missing")
    assert SemanticError.from_dict(error.to_dict()).code is ErrorCode.weights_missing
    assert SemanticError.from_dict({"code": "no-such-code", "message": "m"}).code is ErrorCode.internal


def test_discovery_roundtrip(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret\n")
    discovery = Discovery("127.0.0.1", 1234, str(token), 42, "0.1.0")
    back = Discovery.from_json(discovery.to_json())
    assert back == discovery and back.read_token() == "secret"


def test_protocol_module_is_standard_library_only():
    import ast
    from pathlib import Path

    import core.protocol

    tree = ast.parse(Path(core.protocol.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    import sys

    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
