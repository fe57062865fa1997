"""Raw talking-head videos -> clip shards + manifest + splits + report.json.

  python -m launch.preprocess --input FILE_OR_DIR --output DIR [--dataset folder|mead|hdtf] \
      [--size 256] [--workers N] [--clip-seconds 5] [--min-clip-seconds 1] [--jpeg-quality 90] \
      [--detector dlib|haar|auto] [--detect-stride 5] [--enlargement 0.1] [--crop-span clip|tube] \
      [--max-landmark-gap 15] [--max-timestamp-gap 0.25] [--multi-face largest|skip] \
      [--short-audio trim|skip] [--allow-silent] [--max-seconds S] [--max-failure-rate 0.2] \
      [--identity-seconds 1|off] [--identity-threshold 0.5] [--speaker-from stem|parent] \
      [--audio-dir DIR] [--hdtf-test IDS]

Re-running with the same output directory resumes: finished videos are not redone.
Writes DIR/shards/<key>.array_record, DIR/shards/manifest.json, DIR/shards/splits/ and
DIR/report.json (clips per video, skipped items with reasons, timing).

Exit status: 0 done; 1 no videos, a missing input or an ambiguous --audio-dir pairing;
2 invalid options; 3 stopped because more than --max-failure-rate of the videos were
skipped whole (the counts and first reasons are printed and in report.json). Any other
error (a bug, a full disk) is raised with its traceback.
"""

import argparse
import dataclasses
import sys

from data_pipeline import preprocess
from data_pipeline.preprocess import datasets


def flag(parser, name, **kwargs):
    """Adds --name; --clip-seconds is also accepted as --clip_seconds."""
    names = dict.fromkeys(["--" + name, "--" + name.replace("-", "_")])
    parser.add_argument(*names, **kwargs)


def _seconds_or_off(value: str):
    return None if value == "off" else float(value)


def add_option_flags(p: argparse.ArgumentParser) -> None:
    """Flags of preprocess.PreprocessOptions and of the folder/MEAD/HDTF discovery."""
    d = preprocess.PreprocessOptions()
    flag(p, "dataset", default="folder", choices=("folder", "mead", "hdtf"), help="raw layout")
    flag(p, "workers", type=int, default=1, help="processes (one video each)")
    flag(p, "size", type=int, default=d.size, help="crop side in pixels")
    flag(p, "clip-seconds", type=float, default=d.clip_seconds)
    flag(p, "min-clip-seconds", type=float, default=None,
         help=f"shortest kept clip (default: {d.min_clip_seconds:g}, at most --clip-seconds)")
    flag(p, "jpeg-quality", type=int, default=d.jpeg_quality)
    flag(p, "detector", default=d.detector, choices=("dlib", "haar", "auto"))
    flag(p, "detect-stride", type=int, default=d.detect_stride)
    flag(p, "detect-max-side", type=int, default=d.detect_max_side)
    flag(p, "iou-threshold", type=float, default=d.iou_threshold)
    flag(p, "enlargement", type=float, default=d.enlargement, help="FOMM crop `increase`")
    flag(p, "crop-span", default=d.crop_span, choices=("clip", "tube"),
         help="crop square around the face over each clip, or over the whole track (official)")
    flag(p, "max-landmark-gap", type=int, default=d.max_landmark_gap)
    flag(p, "max-timestamp-gap", type=float, default=d.max_timestamp_gap,
         help="seconds between source frames beyond which the video has a hole: clips are cut there")
    flag(p, "multi-face", default=d.multi_face, choices=("largest", "skip"))
    flag(p, "short-audio", default=d.short_audio, choices=("trim", "skip"))
    flag(p, "allow-silent", action="store_true", help="silent clips for videos without audio")
    flag(p, "max-seconds", type=float, default=None, help="only the first seconds of each video")
    flag(p, "max-failure-rate", type=float, default=d.max_failure_rate,
         help="stop (exit 3) when more of the videos than this fraction are skipped whole")
    flag(p, "identity-seconds", type=_seconds_or_off, default=d.identity_seconds,
         help="seconds between face descriptors along a track, to split it where the person "
              "changes and label other people apart; off: no identity check")
    flag(p, "identity-threshold", type=float, default=d.identity_threshold,
         help="face descriptor distance above which two faces are different people")
    flag(p, "speaker-from", default="stem", choices=("stem", "parent"), help="folder dataset")
    flag(p, "folder-name", default="folder", help="dataset name of a folder dataset")
    flag(p, "audio-dir", default=None,
         help="separate audio, paired by relative path: <audio-dir>/<dir>/<stem>.<ext>")


def options_from(args: argparse.Namespace) -> preprocess.PreprocessOptions:
    fields = {f.name for f in dataclasses.fields(preprocess.PreprocessOptions)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values["min_clip_seconds"] is None:
        default = preprocess.PreprocessOptions.min_clip_seconds
        values["min_clip_seconds"] = min(default, values["clip_seconds"])
    return preprocess.PreprocessOptions(**values)


def find_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of datasets.discover's finder for the chosen layout."""
    kwargs = {"audio_dir": args.audio_dir}
    if args.dataset == "folder":
        kwargs.update(speaker_from=args.speaker_from, dataset=args.folder_name)
    return kwargs


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    flag(p, "input", required=True, help="a video file or a dataset root")
    flag(p, "output", required=True, help="output directory")
    add_option_flags(p)
    flag(p, "hdtf-test", default="",
         help="comma-separated HDTF video ids or persons held out; a person is held out with all "
              "its videos (WDA_BarackObama_001 holds out WDA_BarackObama; default: hash rule)")
    flag(p, "other-split", default="by_speaker_hash", choices=("train", "test", "by_speaker_hash"),
         help="split rule of folder datasets")
    flag(p, "quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    options = options_from(args)
    try:
        options.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        items = datasets.discover(args.input, args.dataset, **find_kwargs(args))
    except (FileNotFoundError, datasets.DiscoveryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not items:
        print(f"error: no videos found in {args.input} ({args.dataset} layout)", file=sys.stderr)
        return 1
    hdtf_test = sorted({datasets.hdtf_person(s) or s for s in args.hdtf_test.split(",") if s}) or None
    splits = {"other": args.other_split, "hdtf_test": hdtf_test}
    try:
        report = preprocess.run_local(items, args.output, options, workers=args.workers,
                                      progress=not args.quiet, splits=splits)
    except preprocess.TooManyFailures as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    minutes = report["video_seconds"] / 60
    print(f"{report['num_items']} videos ({report['done_before']} done before): "
          f"{report['clips_written']} clips from {report['items_with_clips']} videos, "
          f"{report['items_skipped']} skipped {report['skip_reasons']}; "
          f"{report['seconds']:.1f} s for {minutes:.2f} min of video; report: {args.output}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
