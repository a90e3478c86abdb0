"""Trained weights: the manifest, sha256 verification, and a pickle-free tensor file format.

Files use the safetensors layout (u64 header length, JSON header, raw little-endian tensor bytes),
written and read here by hand: it is thirty lines, and loading never executes code.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from core.protocol import ErrorCode, SemanticError

MANIFEST_NAME = "manifest.json"
_DTYPES = {
    "F16": (torch.float16, np.float16),
    "F32": (torch.float32, np.float32),
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "U8": (torch.uint8, np.uint8),
}
_TORCH_TO_CODE = {torch_dtype: code for code, (torch_dtype, _) in _DTYPES.items()}


def bundled_weights_dir() -> Path:
    """SEMANTIC_WEIGHTS_DIR, else the checkout's weights/ (development), else the installed copy."""
    override = os.environ.get("SEMANTIC_WEIGHTS_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / "weights"
    if (checkout / MANIFEST_NAME).exists():
        return checkout
    from core.paths import data_dir

    return data_dir() / "weights"


class WeightStatus(str, Enum):
    ok = "ok"
    missing = "missing"
    corrupt = "corrupt"


@dataclass(frozen=True)
class WeightEntry:
    id: str
    file: str
    sha256: str
    size: int
    url: str = ""
    model: str = ""
    config: dict = field(default_factory=dict)
    card: str = ""


@dataclass
class Manifest:
    entries: dict[str, WeightEntry]
    directory: Path

    @classmethod
    def load(cls, directory: Path | None = None) -> Manifest:
        directory = Path(directory or bundled_weights_dir())
        path = directory / MANIFEST_NAME
        if not path.exists():
            return cls({}, directory)
        entries = {}
        try:
            for item in json.loads(path.read_text(encoding="utf-8")).get("weights", []):
                entry = WeightEntry(**item)
                entries[entry.id] = entry
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable, not JSON, wrong shape
            raise SemanticError(ErrorCode.weights_corrupt,
                                f"The weights manifest {path} cannot be read ({type(exc).__name__}: {exc}). "
                                "Re-run the installer to restore it.") from None
        return cls(entries, directory)

    def save(self) -> None:
        items = [entry.__dict__ for entry in sorted(self.entries.values(), key=lambda e: e.id)]
        (self.directory / MANIFEST_NAME).write_text(json.dumps({"weights": items}, indent=2) + "\n")

    def path(self, weight_id: str) -> Path:
        return self.directory / self.entry(weight_id).file

    def entry(self, weight_id: str) -> WeightEntry:
        if weight_id not in self.entries:
            raise SemanticError(ErrorCode.weights_missing,
                                f"No weights named '{weight_id}' in {self.directory / MANIFEST_NAME}. "
                                "Re-run the installer.")
        return self.entries[weight_id]

    def status(self, weight_id: str) -> WeightStatus:
        path = self.path(weight_id)
        if not path.exists():
            return WeightStatus.missing
        entry = self.entry(weight_id)
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            return WeightStatus.corrupt
        return WeightStatus.ok

    def verified_path(self, weight_id: str) -> Path:
        path = self.path(weight_id)
        status = self.status(weight_id)
        if status is WeightStatus.missing:
            raise SemanticError(ErrorCode.weights_missing,
                                f"Weight file {path} is missing. Re-run the installer to restore it.")
        if status is WeightStatus.corrupt:
            raise SemanticError(ErrorCode.weights_corrupt,
                                f"Weight file {path} is corrupt (its sha256 does not match the manifest). "
                                "Re-run the installer to download it again.")
        return path

    def load_state_dict(self, weight_id: str) -> dict[str, torch.Tensor]:
        path = self.verified_path(weight_id)
        try:
            return load_tensors(path)
        except (ValueError, KeyError, struct.error, json.JSONDecodeError) as exc:
            raise SemanticError(ErrorCode.weights_corrupt, f"Weight file {path} cannot be read: {exc}") from None

    def register(self, weight_id: str, file_path: Path, model: str, config: dict,
                 card: str = "", url: str = "") -> WeightEntry:
        entry = WeightEntry(id=weight_id, file=Path(file_path).name, sha256=sha256_file(file_path),
                            size=Path(file_path).stat().st_size, url=url, model=model,
                            config=config, card=card)
        self.entries[weight_id] = entry
        return entry


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], half: bool = True,
                 metadata: dict[str, str] | None = None) -> None:
    """Write tensors (floating ones as fp16 when ``half``) atomically."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        code = _TORCH_TO_CODE[tensor.dtype]
        raw = tensor.numpy().astype(np.dtype(_DTYPES[code][1]).newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    tmp = Path(str(path) + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a tensor file; values come back as float32 (integers keep their type)."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len > len(data) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(data[8:8 + header_len])
    body = memoryview(data)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor '{name}' lies outside the file")
        np_dtype = np.dtype(_DTYPES[info["dtype"]][1]).newbyteorder("<")
        array = np.frombuffer(body[start:end], dtype=np_dtype).reshape(info["shape"])
        tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))
        tensors[name] = tensor.float() if tensor.is_floating_point() else tensor
    return tensors


def register_weights(file_path: Path, weight_id: str, model: str, config: dict, card: str = "",
                     url: str = "", directory: Path | None = None) -> WeightEntry:
    """Add or update one manifest entry under a file lock (several trainings may finish at once)."""
    import fcntl

    directory = Path(directory or bundled_weights_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = Manifest.load(directory)
        entry = manifest.register(weight_id, file_path, model, config, card, url)
        manifest.save()
    return entry


def load_verified_state(model: torch.nn.Module, manifest: Manifest, weight_id: str, what: str) -> None:
    """Load ``weight_id`` (sha256-checked) into ``model`` strictly; a clear error naming the file otherwise."""
    state = manifest.load_state_dict(weight_id)
    path = manifest.path(weight_id)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise SemanticError(ErrorCode.weights_corrupt,
                            f"Weight file {path} does not fit {what} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}). Re-run the installer.")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise SemanticError(ErrorCode.weights_corrupt, f"Weight file {path} does not fit {what}: {exc}") from None
