"""Wire overhead of the daemon and statistics-harmonization speed, printed as JSON.

    .venv/bin/python bench/daemon.py [--sizes 1 12 24] [--repeats 3]

For 1, 12 and 24 MP RGBA 8-bit images: round trip through a real daemon on loopback with the
no-cost 'echo' action versus the same action in-process, the daemon's peak resident memory
expressed in copies of the image, and statistics harmonization time in-process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.actions.base import JobContext, ModelCache  # noqa: E402
from core.actions.inputs import to_numpy, to_wire  # noqa: E402
from core.actions.registry import find_action  # noqa: E402
from core.device import select_device  # noqa: E402
from tests.e2e.harness import start_daemon  # noqa: E402

SHAPES = {1: (1000, 1000), 12: (3000, 4000), 24: (4000, 6000)}


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_image(megapixels: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = SHAPES[megapixels]
    rng = np.random.default_rng(megapixels)
    image = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    mask = np.zeros((h, w, 1), np.uint8)
    mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
    return image, mask


def measure(mp: int, repeats: int, client, daemon, ctx: JobContext, baseline_rss: int) -> dict:
    echo, harmonize = find_action("echo"), find_action("harmonize")
    image, mask = make_image(mp)
    wire = [to_wire("image", image)]

    def round_trip():
        frame = client.run("echo", {}, wire)
        assert to_numpy(frame.arrays["image"]).shape == image.shape

    remote = best_of(repeats, round_trip)
    local = best_of(repeats, lambda: echo.run({"image": image}, {}, ctx))
    stats = best_of(repeats, lambda: harmonize.run({"image": image, "mask": mask}, {"method": "statistics"}, ctx))
    peak = peak_rss_bytes(daemon.process.pid)
    return {
        "megapixels": mp, "shape": list(image.shape), "image_mb": round(image.nbytes / 1e6, 1),
        "echo_daemon_s": round(remote, 4), "echo_in_process_s": round(local, 6),
        "wire_overhead_s": round(remote - local, 4),
        "wire_overhead_vs_statistics_harmonize": round((remote - local) / stats, 3),
        "statistics_harmonize_s": round(stats, 3),
        "daemon_peak_rss_growth_image_copies": round((peak - baseline_rss) / image.nbytes, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 12, 24], choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ctx = JobContext(select_device("cpu"), ModelCache())
    daemon = start_daemon(Path(tempfile.mkdtemp(prefix="semantic-bench-")), "--idle-exit", "0")
    results = []
    try:
        client = daemon.client()
        client.health()
        baseline_rss = peak_rss_bytes(daemon.process.pid)
        for mp in sorted(args.sizes):
            results.append(measure(mp, args.repeats, client, daemon, ctx, baseline_rss))
    finally:
        daemon.stop()
    print(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                      "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()
