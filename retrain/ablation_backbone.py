"""The paper's Tables V/VI rows for a fixed backbone (DCS-FB, paper section 4.3): the six
variants of ``retrain/ablation.py`` (no attention, self-attention, DCS-Attention, each
without and with the IBB; eta chosen on the validation split) for one of the shipped
backbones, on the embedded synthetic Re-ID set at a small input.

The backbone's arch file (``backbones/NAME.yaml``) is written with the chosen input size
(and, with ``--small``, the reduced variant the tests use: ResNet with one block per stage,
HRNet-W18-small, a shallower MobileNetV2-200, a 2-block ViT) into the runs folder, then
``retrain/ablation.py --arch`` trains it; every other option is passed on to it.

    python retrain/ablation_backbone.py --backbone osnet_x1_0                      # 64x32, 5 seeds
    python retrain/ablation_backbone.py --backbone mobilenetv2 --seeds 0 --etas 0.1 \\
        --set epochs=1 --set max_steps_per_epoch=2 --out /tmp/abl                  # a smoke run

NOTE: for TransReID the "none" and "self" variants are the same network (the ViT's own
attention); DCS replaces it in every block.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMALL_VARIANT = {"resnet50": {"timm_kwargs": {"layers": [1, 1, 1, 1]}},
                 "hrnet_w32": {"backbone": "hrnet_w18_small"},
                 "mobilenetv2_200": {"block_repeats": [1, 1, 2, 2, 1, 1, 1]},
                 "transreid": {"timm_kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}}


def write_arch(backbone: str, height: int, width: int, small: bool, out: Path) -> Path:
    """The backbone's arch file at ``height x width`` (reduced with ``small``) as ``out/arch.yaml``."""
    from dnas.architectures import read_arch
    from dnas.io import atomic_write_yaml
    from dnas.resources import short_names

    backbones = short_names("backbones")
    if backbone not in backbones:
        raise SystemExit(f"--backbone {backbone}: expected one of {', '.join(backbones)}")
    changes = dict(SMALL_VARIANT.get(backbone, {})) if small else {}
    arch = read_arch(backbone, input_size=[3, height, width], **changes)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / "arch.yaml", arch)
    return out / "arch.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="a backbone short name (mobilenetv2, osnet_x1_0, ...)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--small", action="store_true", help="the reduced variant of the tests (CPU-sized)")
    p.add_argument("--runs", help="run directories (default runs/ablation-NAME)")
    p.add_argument("--name", help="output file stem (default ablation_NAME_synthetic)")
    args, rest = p.parse_known_args(argv)
    if "--arch" in rest:
        raise SystemExit("--arch: the arch is the backbone's; use retrain/ablation.py for a derived arch")
    runs = Path(args.runs or ROOT / "runs" / f"ablation-{args.backbone}")
    arch = write_arch(args.backbone, args.height, args.width, args.small, runs / "arch")
    from retrain import ablation

    return ablation.main(["--arch", str(arch), "--runs", str(runs),
                          "--name", args.name or f"ablation_{args.backbone}_synthetic", *rest])


if __name__ == "__main__":
    sys.exit(main())
