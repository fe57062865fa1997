"""Exports a generator (and its Audio2Lip) for inference outside training (edtalk_jax/export.py).

  python -m launch.export stablehlo --checkpoint CKPT [--audio2lip A2L] --out DIR [--platforms cpu,cuda,tpu]
  python -m launch.export params --checkpoint CKPT [--audio2lip A2L] --out DIR
  python -m launch.export pt --checkpoint CKPT [--audio2lip A2L] --out DIR      (needs torch)

CKPT: an official .pt, a launch.convert directory, a training workdir (its latest
checkpoint, EMA weights when kept) or a step directory; a stage-4 run brings its own
Audio2Lip. stablehlo: serialized StableHLO of encode_source, coefficients, render and
audio2lip with a symbolic frame batch, the weights as safetensors, manifest.json, and
edtalk_exported.py, which runs them with jax and numpy alone. params: orbax variables +
model.json per model, and safetensors. pt: official-layout EDTalk.pt /
EDTalk_lip_pose.pt / Audio2Lip.pt for the official demos. DIR appears only when complete.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    from edtalk_jax import export, infer
    from edtalk_jax.run_config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m launch.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=export.FORMATS)
    parser.add_argument("--checkpoint", required=True, help="the generator to export")
    parser.add_argument("--audio2lip", help="Audio2Lip.pt, a launch.convert directory or a stage-4 run")
    parser.add_argument("--out", required=True, help="a new (or empty) directory")
    parser.add_argument("--platforms", default=",".join(export.PLATFORMS),
                        help="stablehlo: platforms to lower for (default cpu,cuda,tpu)")
    args = parser.parse_args(argv)
    kwargs = {}
    if args.format == "stablehlo":
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = sorted(set(platforms) - set(export.PLATFORMS))
        if not platforms or unknown:
            parser.error(f"--platforms: unknown {unknown or 'empty list'}; choose from {','.join(export.PLATFORMS)}")
        kwargs["platforms"] = platforms
    try:
        models = infer.load_models(args.checkpoint, args.audio2lip)
        written = export.export(args.format, models, args.out, **kwargs)
    except (export.ExportError, infer.InferenceError, ConfigError, FileNotFoundError, ValueError, ImportError) as e:
        sys.exit(f"launch.export: error: {e}")
    print(json.dumps({"format": args.format, "out": args.out, "checkpoint": models.where, "written": written}))


if __name__ == "__main__":
    main()
