"""Weight files, the manifest, and verified downloads against a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from core.protocol import ErrorCode, SemanticError
from core.weights import Manifest, WeightStatus, load_tensors, register_weights, save_tensors
from core.weights_install import download, install_weights


def make_weights(directory: Path, name="net") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    torch.manual_seed(0)
    save_tensors(path, {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4),
                        "steps": torch.tensor([7], dtype=torch.int64)})
    register_weights(path, name, model="test", config={"width": 4}, directory=directory)
    return path


def test_tensor_file_roundtrip_fp16(tmp_path):
    tensors = {"a": torch.randn(5, 7), "b": torch.arange(6, dtype=torch.int64).view(2, 3)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    back = load_tensors(tmp_path / "t.safetensors")
    assert back["a"].dtype == torch.float32 and torch.allclose(back["a"], tensors["a"], atol=2e-3)
    assert torch.equal(back["b"], tensors["b"])


def test_manifest_verifies_sha256_and_names_the_file(tmp_path):
    path = make_weights(tmp_path)
    manifest = Manifest.load(tmp_path)
    assert manifest.status("net") is WeightStatus.ok
    assert set(manifest.load_state_dict("net")) == {"conv.weight", "conv.bias", "steps"}
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SemanticError) as info:
        manifest.load_state_dict("net")
    assert info.value.code is ErrorCode.weights_corrupt and str(path) in info.value.message
    path.unlink()
    with pytest.raises(SemanticError) as info:
        manifest.load_state_dict("net")
    assert info.value.code is ErrorCode.weights_missing and str(path) in info.value.message


def test_manifest_roundtrip_and_unique_ids(tmp_path):
    make_weights(tmp_path, "one")
    make_weights(tmp_path, "two")
    manifest = Manifest.load(tmp_path)
    assert sorted(manifest.entries) == ["one", "two"]
    assert manifest.entries["one"].config == {"width": 4}


def test_bundled_manifest_entries_verify():
    manifest = Manifest.load(Path(__file__).resolve().parent.parent / "weights")
    for weight_id, entry in manifest.entries.items():
        assert manifest.status(weight_id) is WeightStatus.ok, weight_id
        assert entry.size < 25_000_000, f"{entry.file} is over 25 MB"
        assert (manifest.directory / entry.card).exists() if entry.card else True


class RangeServer:
    """Serves one file with HTTP Range support; can drop the connection mid-file once."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.data, self.fail_after, self.requests = data, fail_after, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                outer.requests.append(start)
                body = outer.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.fail_after is not None:
                    cut, outer.fail_after = outer.fail_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/net.safetensors"

    def close(self):
        self.server.shutdown()


def test_download_resumes_after_a_dropped_connection(tmp_path):
    data = bytes(range(256)) * 4000
    server = RangeServer(data, fail_after=300_000)
    try:
        download(server.url, tmp_path / "net.bin", hashlib.sha256(data).hexdigest(), backoff_s=0.01,
                 report=lambda s: None)
    finally:
        server.close()
    assert (tmp_path / "net.bin").read_bytes() == data
    assert server.requests[0] == 0 and 200_000 < server.requests[1] <= 300_000, server.requests
    assert not (tmp_path / "net.bin.part").exists()


def test_download_rejects_a_corrupt_file(tmp_path):
    server = RangeServer(b"not the weights you are looking for")
    try:
        with pytest.raises(SemanticError) as info:
            download(server.url, tmp_path / "net.bin", "0" * 64, retries=2, backoff_s=0.01, report=lambda s: None)
    finally:
        server.close()
    assert info.value.code is ErrorCode.weights_corrupt
    assert not (tmp_path / "net.bin").exists() and not (tmp_path / "net.bin.part").exists()


def test_install_weights_downloads_by_url_and_is_rerunnable(tmp_path):
    source = tmp_path / "source"
    path = make_weights(source)
    server = RangeServer(path.read_bytes())
    manifest = Manifest.load(source)
    entry = manifest.entries["net"]
    manifest.entries["net"] = type(entry)(**{**entry.__dict__, "url": server.url})
    manifest.save()
    path.unlink()  # only the URL can provide it now
    try:
        statuses = install_weights(source, tmp_path / "target", report=lambda s: None)
        again = install_weights(source, tmp_path / "target", report=lambda s: None)
    finally:
        server.close()
    assert statuses == {"net": WeightStatus.ok} and again == {"net": WeightStatus.ok}
    assert len(server.requests) == 1
    assert Manifest.load(tmp_path / "target").status("net") is WeightStatus.ok


def test_install_weights_without_source_or_url_is_a_clear_error(tmp_path):
    source = tmp_path / "source"
    make_weights(source).unlink()
    with pytest.raises(SemanticError, match="net.safetensors"):
        install_weights(source, tmp_path / "target", report=lambda s: None)
