"""Recomputes the official EDTalk outputs for a checkpoint and NCHW inputs.

  python -m launch.parity --checkpoint EDTalk.pt --inputs IN.npz --out OUT.npz [--dtype float64]

IN.npz holds the input keys of shared/fixtures/parity (e.g. src, lip_img, pose_img,
exp_img, lip_alpha, exp_alpha for the full generator); OUT.npz gets every output key for
the detected kind (enc_wa, enc_feat0..N, q_lipnonlip, q_exp, out_V, out_A, out_A_expw,
out_V_expw; lip_pose: out_fwd, out_V, out_A; audio2lip and discriminator: out), NCHW.
float64 enables jax_enable_x64 and upcasts the float32 weights.
"""

import argparse
import sys
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="official-layout .pt")
    p.add_argument("--inputs", required=True, help="npz of NCHW inputs")
    p.add_argument("--out", required=True, help="npz to write")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--kind", help="override the detected kind")
    args = p.parse_args(argv)

    import jax
    jax.config.update("jax_enable_x64", args.dtype == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on GPUs
    from edtalk_jax import convert_torch, parity, torch_io

    try:
        ckpt = torch_io.load_pt(args.checkpoint)
        with np.load(args.inputs) as f:
            inputs = {k: f[k] for k in f.files}
        kind = args.kind or parity.kind_for_inputs(convert_torch.detect_kind(ckpt, args.checkpoint), inputs)
        sd = convert_torch.state_dict_of(ckpt, kind, args.checkpoint)
        cfg, variables = convert_torch.torch_to_flax(kind, sd, args.checkpoint)
        t0 = time.perf_counter()
        outputs = parity.compute(kind, cfg, variables, inputs, getattr(jax.numpy, args.dtype))
        seconds = time.perf_counter() - t0
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    np.savez(args.out, **outputs)
    print(f"{kind} {cfg} ({args.dtype}, {seconds:.1f} s incl. compile) -> {args.out}: {sorted(outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
