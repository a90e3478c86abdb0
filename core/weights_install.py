"""Install weights: copy from a local folder or download (resumable, retried, verified, atomic)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import requests

from core.protocol import ErrorCode, SemanticError
from core.weights import MANIFEST_NAME, Manifest, WeightEntry, WeightStatus, sha256_file

CHUNK_BYTES = 1 << 16  # small enough that an interrupted transfer keeps most of what arrived
Report = Callable[[str], None]


def download(url: str, dest: Path, sha256: str, retries: int = 4, timeout: float = 30.0,
             backoff_s: float = 1.0, report: Report = print) -> None:
    """Fetch ``url`` into ``dest``: resume a partial ``.part``, verify sha256, then rename."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(1, retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code == 416:  # nothing left to send: the .part is whole (or bad)
                    pass
                elif response.status_code in (200, 206):
                    resumed = response.status_code == 206 and offset > 0
                    expected = int(response.headers.get("Content-Length", -1))
                    expected = expected + offset if resumed and expected >= 0 else expected
                    _append(response, part, "ab" if resumed else "wb")  # 200: the server ignored Range
                    if expected >= 0 and part.stat().st_size < expected:
                        raise requests.ConnectionError(
                            f"connection closed after {part.stat().st_size} of {expected} bytes")
                else:
                    raise requests.HTTPError(f"HTTP {response.status_code}")
        except (requests.RequestException, OSError) as exc:
            last_error = str(exc)
            report(f"  download of {dest.name} interrupted ({exc}); retry {attempt}/{retries}")
            time.sleep(backoff_s * attempt)
            continue
        if part.exists() and sha256_file(part) == sha256:
            os.replace(part, dest)
            return
        last_error = "sha256 mismatch"
        report(f"  {dest.name}: downloaded file does not match its sha256; starting over")
        part.unlink(missing_ok=True)
    raise SemanticError(ErrorCode.weights_corrupt if last_error == "sha256 mismatch" else ErrorCode.weights_missing,
                        f"Could not download {dest.name} from {url}: {last_error}.")


def _append(response: requests.Response, part: Path, mode: str) -> None:
    with open(part, mode) as f:
        for chunk in response.iter_content(CHUNK_BYTES):
            f.write(chunk)


def install_weights(source: Path, target: Path, report: Report = print) -> dict[str, WeightStatus]:
    """Make ``target`` hold every weight in ``source``'s manifest, verified."""
    source_manifest = Manifest.load(source)
    target.mkdir(parents=True, exist_ok=True)
    statuses = {}
    for entry in source_manifest.entries.values():
        statuses[entry.id] = _install_one(entry, source, target, report)
    shutil.copyfile(source / MANIFEST_NAME, target / MANIFEST_NAME)
    for card in source.glob("*.md"):
        shutil.copyfile(card, target / card.name)
    return statuses


def _install_one(entry: WeightEntry, source: Path, target: Path, report: Report) -> WeightStatus:
    dest = target / entry.file
    if dest.exists() and sha256_file(dest) == entry.sha256:
        report(f"  {entry.file}: already installed, sha256 ok")
        return WeightStatus.ok
    local = source / entry.file
    if local.exists() and local.resolve() != dest.resolve() and sha256_file(local) == entry.sha256:
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(local, part)
        os.replace(part, dest)
        report(f"  {entry.file}: installed, sha256 ok")
        return WeightStatus.ok
    if entry.url:
        report(f"  {entry.file}: downloading {entry.url}")
        download(entry.url, dest, entry.sha256, report=report)
        report(f"  {entry.file}: downloaded, sha256 ok")
        return WeightStatus.ok
    raise SemanticError(ErrorCode.weights_missing,
                        f"Weight file {entry.file} is missing or corrupt in {source} and the manifest "
                        "gives no URL to download it from.")
