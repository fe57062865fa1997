"""Converts official EDTalk checkpoints to Flax and back.

  python -m launch.convert to-flax EDTalk.pt out/edtalk            [--kind generator]
  python -m launch.convert to-torch out/edtalk EDTalk_roundtrip.pt  (needs edtalk-jax[torch])

Reading a .pt never executes pickled code and needs no torch. Kinds (detected from the
file unless given): generator (EDTalk.pt), lip_pose (EDTalk_lip_pose.pt), audio2lip
(Audio2Lip.pt), discriminator (the 'dis' entry of a training checkpoint), vgg19
(torchvision vgg19-*.pth, for the perceptual loss).
"""

import argparse
import sys

from edtalk_jax import convert_torch, model_io


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-flax", help="official .pt -> orbax variables + model.json")
    a.add_argument("checkpoint")
    a.add_argument("out_dir")
    a.add_argument("--kind", choices=convert_torch.KINDS)
    b = sub.add_parser("to-torch", help="a converted directory -> official-layout .pt")
    b.add_argument("model_dir")
    b.add_argument("out_pt")
    args = p.parse_args(argv)
    try:
        if args.cmd == "to-flax":
            kind, cfg, variables = convert_torch.load_official(args.checkpoint, args.kind)
            model_io.save_model(args.out_dir, kind, cfg, variables)
            print(f"{args.checkpoint}: {kind} {cfg} -> {args.out_dir}")
        else:
            kind, cfg, variables = model_io.load_model(args.model_dir)
            convert_torch.save_official(args.out_pt, kind, cfg, variables)
            print(f"{args.model_dir}: {kind} -> {args.out_pt}")
    except (ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
