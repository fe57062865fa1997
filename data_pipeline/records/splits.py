"""Train/test splits of a shard directory, always by person, and the index command:

  python -m data_pipeline.shards DIR   (or python -m data_pipeline.records.splits DIR)

writes DIR/manifest.json (data_pipeline.records.shards) and DIR/splits/{train,test}.json:
JSON lists of clip keys "<dataset>/<clip_id>" (stable when shards are added, unlike
global indices); see `write_splits` for the rules.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from typing import Callable, Collection, Sequence

from data_pipeline import files
from data_pipeline.records import shards

SPLITS_DIR = "splits"
MEAD_TEST_SPEAKERS = ("M003", "M030", "W009", "W015")  # official EDTalk/MEAD test actors


def hash_held_out(speakers: Collection[str], fraction: float, salt: str = "") -> set[str]:
    """The test speakers of the "by_speaker_hash" rule: speakers ranked by
    sha1(salt + speaker), the first round(fraction * n) held out, at least one when
    fraction > 0 and n >= 2, never all of them. Deterministic for a given speaker set."""
    ranked = sorted(set(speakers), key=lambda s: hashlib.sha1((salt + s).encode()).hexdigest())
    k = int(round(fraction * len(ranked)))
    if fraction > 0 and len(ranked) >= 2:
        k = min(max(k, 1), len(ranked) - 1)
    return set(ranked[:k])


def split_group(speaker: str) -> str:
    """The person a speaker label's clips are split with: the label before any "+"."""
    return speaker.split("+", 1)[0]


def write_splits(shards_dir: str | os.PathLike, *,
                 mead_test_speakers: Collection[str] = MEAD_TEST_SPEAKERS,
                 hdtf_test: Collection[str] | Callable[[str], bool] | None = None,
                 hdtf_test_fraction: float = 0.2,
                 other: str = "by_speaker_hash", other_test_fraction: float = 0.125) -> dict:
    """Writes splits/train.json and splits/test.json (lists of clip keys) from the
    manifest and returns {"train": keys, "test": keys}. Rules, always by person: a clip's
    split group is its speaker label before any "+" (preprocessing labels a second
    person in a video "<speaker>+<video>.<n>", who follows the video's main speaker; for
    HDTF the speaker is the person, datasets.hdtf_person, not the video id):
      mead:  test = the actors in `mead_test_speakers` (official: M003 M030 W009 W015).
      hdtf:  test = the persons in `hdtf_test` (a set, or a predicate on the person);
             when None, `hash_held_out(persons, hdtf_test_fraction)`.
      other datasets (synthetic, folder, ...): `other` = "train" (all train), "test"
             (all test) or "by_speaker_hash" (hash_held_out per dataset with
             `other_test_fraction`)."""
    if other not in ("train", "test", "by_speaker_hash"):
        raise ValueError(f"other={other!r}: expected 'train', 'test' or 'by_speaker_hash'")
    clips = shards.load_manifest(shards_dir)["clips"]
    speakers: dict[str, set[str]] = {}
    for c in clips:
        speakers.setdefault(c["dataset"], set()).add(split_group(c["speaker"]))
    test_speakers = {}
    for dataset, spk in speakers.items():
        if dataset == "mead":
            test_speakers[dataset] = set(spk) & set(mead_test_speakers)
        elif dataset == "hdtf" and callable(hdtf_test):
            test_speakers[dataset] = {s for s in spk if hdtf_test(s)}
        elif dataset == "hdtf":
            test_speakers[dataset] = (hash_held_out(spk, hdtf_test_fraction, "hdtf/")
                                      if hdtf_test is None else set(spk) & set(hdtf_test))
        elif other == "by_speaker_hash":
            test_speakers[dataset] = hash_held_out(spk, other_test_fraction, dataset + "/")
        else:
            test_speakers[dataset] = set(spk) if other == "test" else set()
    splits = {"train": [], "test": []}
    for c in clips:
        held_out = split_group(c["speaker"]) in test_speakers[c["dataset"]]
        splits["test" if held_out else "train"].append(shards.clip_key(c))
    os.makedirs(os.path.join(os.fspath(shards_dir), SPLITS_DIR), exist_ok=True)
    for name, keys in splits.items():
        files.write_json(os.path.join(os.fspath(shards_dir), SPLITS_DIR, name + ".json"), keys, indent=None)
    return splits


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Index a shard directory: manifest + splits.")
    parser.add_argument("shards_dir")
    parser.add_argument("--mead_test_speakers", default=",".join(MEAD_TEST_SPEAKERS))
    parser.add_argument("--hdtf_test", default="", help="comma-separated HDTF persons held out "
                        "(the speaker labels, e.g. WDA_BarackObama); empty: hash rule with "
                        "--hdtf_test_fraction")
    parser.add_argument("--hdtf_test_fraction", type=float, default=0.2)
    parser.add_argument("--other", default="by_speaker_hash",
                        choices=("train", "test", "by_speaker_hash"))
    parser.add_argument("--other_test_fraction", type=float, default=0.125)
    args = parser.parse_args(argv)
    manifest = shards.write_manifest(args.shards_dir)
    splits = write_splits(
        args.shards_dir, mead_test_speakers=[s for s in args.mead_test_speakers.split(",") if s],
        hdtf_test=[s for s in args.hdtf_test.split(",") if s] or None,
        hdtf_test_fraction=args.hdtf_test_fraction, other=args.other,
        other_test_fraction=args.other_test_fraction)
    print(f"{args.shards_dir}: {manifest['num_clips']} clips in {len(manifest['shards'])} "
          f"shards; train {len(splits['train'])}, test {len(splits['test'])}")


if __name__ == "__main__":
    main()
