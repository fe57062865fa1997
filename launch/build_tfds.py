"""Builds a TFDS dataset (array_record) of clip records from raw MEAD / HDTF / folder videos.

  python -m launch.build_tfds --dataset folder|mead|hdtf --manual-dir RAW --data-dir OUT \
      [--workers N] [preprocessing flags of launch.preprocess] \
      [--beam-runner DirectRunner --beam-options "--direct_num_workers=2 --direct_running_mode=multi_processing"]

Without --beam-runner the examples are made by a local process pool; with it, by Apache
Beam (this package must be installed on the Beam workers). Writes OUT/<name>/2.0.0/
(name: mead_clips, hdtf_clips or folder_clips); read it with
`data_pipeline.records.tfds_source.open_tfds_clips(OUT/<name>/2.0.0, split)`.
Use this entry point, not `tfds build` (which imports TensorFlow). Exit status: 0 built,
2 invalid options, 3 stopped by the local pool's --max-failure-rate (launch.preprocess).
"""

import argparse
import shlex
import sys

import tensorflow_datasets as tfds

from data_pipeline.preprocess import tfds_builders
from launch import preprocess as preprocess_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    preprocess_cli.flag(p, "manual-dir", required=True, help="the raw dataset root")
    preprocess_cli.flag(p, "data-dir", required=True, help="TFDS data_dir to write into")
    preprocess_cli.add_option_flags(p)
    preprocess_cli.flag(p, "test-speakers", default=None,
                         help="comma-separated held-out speakers (default: the dataset's rule)")
    preprocess_cli.flag(p, "beam-runner", default=None, help="e.g. DirectRunner, DataflowRunner")
    preprocess_cli.flag(p, "beam-options", default="", help="Beam pipeline flags, one string")
    args = p.parse_args(argv)
    options = preprocess_cli.options_from(args)
    try:
        options.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = None if args.test_speakers is None else [s for s in args.test_speakers.split(",") if s]
    builder = tfds_builders.BUILDERS[args.dataset](
        data_dir=args.data_dir, options=options, workers=args.workers, test_speakers=test,
        find=preprocess_cli.find_kwargs(args))
    config = tfds.download.DownloadConfig(manual_dir=args.manual_dir)
    if args.beam_runner:
        from apache_beam.options.pipeline_options import PipelineOptions

        config = tfds.download.DownloadConfig(
            manual_dir=args.manual_dir, beam_runner=args.beam_runner,
            beam_options=PipelineOptions(shlex.split(args.beam_options)))
    from data_pipeline import preprocess

    try:
        builder.download_and_prepare(download_config=config)
    except preprocess.TooManyFailures as e:  # the local pool's failure-rate limit
        print(f"error: {e}", file=sys.stderr)
        return 3
    splits = {name: len(clips) for name, clips in builder.info.metadata["index"].items()}
    print(f"{builder.data_dir}: {splits} clips")
    if builder.report is not None:
        print(f"skipped: {builder.report['skip_reasons']} (details in the dataset's metadata.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
