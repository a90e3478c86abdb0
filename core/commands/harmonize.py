"""gimp-semantic harmonize IMAGE --mask MASK -o OUT [--method M] [--strength S] [--invert-mask]"""

from __future__ import annotations

from core.actions.harmonize import ALIASES, DEFAULT_METHOD, METHODS
from core.commands.common import add_runtime_options, execute, write_output
from core.imaging.io import load_image, load_mask


def register(subparsers) -> None:
    parser = subparsers.add_parser("harmonize", help="match a pasted foreground (mask) to its background")
    parser.add_argument("image", help="RGB or RGBA image (any size)")
    parser.add_argument("--mask", required=True, help="8-bit grayscale foreground mask (soft values respected)")
    parser.add_argument("-o", "--output", required=True, help="output file; keeps the input's size and alpha")
    parser.add_argument("--method", choices=[*sorted(METHODS), *ALIASES], default=DEFAULT_METHOD,
                        help="transform: learned colour transform (default); dih: Tsai et al.'s network "
                             "('deep' is its old name); statistics: classical colour transfer")
    parser.add_argument("--strength", type=float, default=1.0, help="0 = unchanged … 1 = full (default)")
    parser.add_argument("--invert-mask", action="store_true", help="the mask marks the background")
    add_runtime_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    image, mask = load_image(args.image), load_mask(args.mask)
    params = {"method": args.method, "strength": args.strength, "invert_mask": args.invert_mask}
    result = execute("harmonize", {"image": image, "mask": mask[..., None]}, params, args)
    write_output(args.output, result["image"])
    return 0
