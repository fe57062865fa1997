"""Animates a face from raw media: every official EDTalk demo mode (edtalk_jax/infer.py).

  # EDTalk-A with a predefined emotion (the official README's recommended mode)
  python -m launch.infer --checkpoint EDTalk.pt --audio2lip Audio2Lip.pt \\
      --source face.jpg --audio speech.wav --pose-video pose.mp4 --emotion happy --out out.mp4
  # EDTalk-A, expression from a video; EDTalk-V: lips, pose and expression from videos
  python -m launch.infer --checkpoint EDTalk.pt --audio2lip Audio2Lip.pt \\
      --source face.jpg --audio speech.wav --pose-video pose.mp4 --exp-video exp.mp4 --out out.mp4
  python -m launch.infer --checkpoint EDTalk.pt --source face.jpg \\
      --lip-video lips.mp4 --pose-video pose.mp4 --exp-video exp.mp4 --out out.mp4
  # the lip-pose model, audio-driven with the pose held fixed; re-lipping a whole video
  python -m launch.infer --checkpoint EDTalk_lip_pose.pt --audio2lip Audio2Lip.pt \\
      --source face.jpg --audio speech.wav --out out.mp4
  python -m launch.infer --checkpoint EDTalk_lip_pose.pt --audio2lip Audio2Lip.pt \\
      --source talking.mp4 --audio new_speech.wav --out out.mp4

--checkpoint: an official .pt (read without executing it), a launch.convert directory, a
training workdir (its latest checkpoint, the EMA weights when kept) or a step directory.
--audio2lip: Audio2Lip.pt, a converted one or a stage-4 run; a stage-4 --checkpoint
brings its own. Photos and videos may be uncropped (--crop auto finds the face). The mp4
(h264 + AAC, 25 fps) appears only when complete; one JSON line summarises the run.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    from data_pipeline.preprocess.audio import AudioError
    from data_pipeline.preprocess.faces import FaceError
    from data_pipeline.preprocess.video_io import VideoError
    from edtalk_jax import infer
    from edtalk_jax.run_config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m launch.infer", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="generator: EDTalk.pt, EDTalk_lip_pose.pt, "
                        "a launch.convert directory, a training workdir or step directory")
    parser.add_argument("--audio2lip", help="Audio2Lip.pt, a launch.convert directory or a stage-4 run")
    parser.add_argument("--source", required=True, help="the face to animate: a photo, or a video to re-lip")
    parser.add_argument("--audio", help="driving speech (any format FFmpeg reads, or a video's audio track)")
    parser.add_argument("--lip-video", help="lips from this video (EDTalk-V)")
    parser.add_argument("--pose-video", help="head pose from this video (default: the source's pose, fixed)")
    parser.add_argument("--exp-video", help="expression from this video")
    parser.add_argument("--exp-image", help="expression from this photo")
    parser.add_argument("--emotion", help="expression: angry, contempt, disgusted, fear, happy, neutral, sad, "
                        "surprised, or a .npy of the model's exp_dim coefficients")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per render call (default 8)")
    parser.add_argument("--crop", choices=infer.CROP_MODES, default="auto",
                        help="auto: find and crop the face in every input; none: inputs are face crops")
    parser.add_argument("--detector", choices=("dlib", "haar", "auto"), default="dlib", help="face detector")
    parser.add_argument("--no-smooth", action="store_true",
                        help="do not smooth the audio lip coefficients over time (official: smoothed)")
    parser.add_argument("--pose-extend", choices=infer.EXTEND_RULES, default="auto",
                        help="a pose video shorter than the output: hold its last frame, pingpong, loop "
                        "(auto: official, pingpong for the audio-driven lip-pose model, else hold)")
    parser.add_argument("--exp-extend", choices=infer.EXTEND_RULES, default="auto",
                        help="an expression video shorter than the output (auto: official pingpong)")
    parser.add_argument("--exp-trim-end", type=int, default=20,
                        help="frames dropped from the end of an expression video (official: 20)")
    parser.add_argument("--max-length-mismatch", type=float, default=1.0,
                        help="seconds --audio may differ from --lip-video's length (EDTalk-V)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    options = infer.Options(batch_size=args.batch_size, crop=args.crop, detector=args.detector,
                            smooth=not args.no_smooth, pose_extend=args.pose_extend,
                            exp_extend=args.exp_extend, exp_trim_end=args.exp_trim_end,
                            max_length_mismatch=args.max_length_mismatch, progress=not args.no_progress)
    try:
        models = infer.load_models(args.checkpoint, args.audio2lip,
                                   need_audio2lip=args.audio is not None and args.lip_video is None)
        inputs = infer.Inputs(args.source, audio=args.audio, lip_video=args.lip_video,
                              pose_video=args.pose_video, exp_video=args.exp_video, exp_image=args.exp_image,
                              emotion=args.emotion)
        summary = infer.run(models, inputs, args.out, options)
    except (infer.InferenceError, ConfigError, AudioError, FaceError, VideoError,
            FileNotFoundError, ValueError) as e:
        sys.exit(f"launch.infer: error: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
