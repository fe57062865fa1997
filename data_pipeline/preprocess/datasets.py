"""Discovery of raw videos: MEAD, HDTF and "a folder of videos" -> VideoItems.

Layouts:
  mead    <root>/<actor>/video/front/<emotion>/level_<k>/<nnn>.mp4, audio beside it at
          <root>/<actor>/audio/<emotion>/level_<k>/<nnn>.m4a; or the official flattened
          <dir>/<actor>#<emotion>#level_<k>#<nnn>.mp4 (e.g. MEAD_front/Original_video),
          audio at <dir>/../audio/<name>.{wav,m4a} when present.
  hdtf    <root>/*.mp4 (e.g. WDA_BarackObama_000.mp4); speaker = the person
          (`hdtf_person`: WDA_BarackObama_000 and _001 are one speaker), so splits by
          speaker hold a person out entirely.
  folder  any video files under <root> (recursive); speaker = the file stem or its
          parent folder's name.
Separate audio (`audio_dir`) is paired by relative path: the video <root>/alice/take1.mp4
takes <audio_dir>/alice/take1.<ext> (ext one of AUDIO_EXTENSIONS, in that order). The
older lookup by file name alone, <audio_dir>/take1.<ext>, is kept for flat audio folders
but only where it is unambiguous: when several videos share the name (alice/take1.mp4
and bob/take1.mp4), such a match raises DiscoveryError naming them, never pairs silently.
MEAD also looks for its unique clip name (<audio_dir>/<actor>#<emotion>#level_<k>#<nnn>)
and its own audio tree (<audio_dir>/<actor>/audio/<emotion>/level_<k>/<nnn>). A video
without separate audio uses its own track (a warning counts them when audio_dir is set).

Keys are file-system safe ([A-Za-z0-9._#=+-]); a name that had to be changed (spaces,
non-ASCII, non-UTF-8 bytes) gets a hash of its original bytes so keys stay unique.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
from typing import Dict, List, Optional

from data_pipeline.records import schema
from data_pipeline.preprocess import VideoItem
from data_pipeline.preprocess.video_io import VIDEO_EXTENSIONS, display_path

AUDIO_EXTENSIONS = (".wav", ".m4a", ".aac", ".mp3", ".flac")
_UNSAFE = re.compile(r"[^A-Za-z0-9._#=+-]")
_MEAD_NAME = re.compile(r"^([A-Za-z]\d+)#([a-z]+)#level_(\d+)#(\d+)$")
_HDTF_ADDRESS = re.compile(r"^(W[DR]A_[A-Za-z]+?)\d*_\d+$")  # WDA_/WRA_<Name>[<series>]_<nnn>
_HDTF_RADIO = re.compile(r"^(RD_Radio\d+)_\d+$")  # RD_Radio<channel>_<nnn>


def safe_key(name: str) -> str:
    """A file-system-safe, unique form of `name` (a str, possibly with surrogate escapes)."""
    key = _UNSAFE.sub("_", name)
    if key != name or not key:
        key += "-" + hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    return key


def _videos(root: str) -> List[str]:
    """Video files under root (recursive), as paths relative to root, sorted by bytes."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found, key=os.fsencode)


class DiscoveryError(ValueError):
    """A dataset that cannot be discovered as asked (e.g. ambiguous separate audio)."""


def _find_audio(directory: Optional[str], stem: str) -> Optional[str]:
    """<directory>/<stem>.<ext> for the first audio extension that exists; stem may be a
    relative path."""
    if not directory:
        return None
    for ext in AUDIO_EXTENSIONS:
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _pair_audio(audio_dir: Optional[str], rels: List[str]) -> Dict[str, Optional[str]]:
    """The separate audio file of each video (relative path -> audio path or None): by
    relative path, else by file name when no other video has that name (module docstring)."""
    if not audio_dir:
        return {rel: None for rel in rels}
    by_name = collections.defaultdict(list)
    for rel in rels:
        by_name[os.path.splitext(os.path.basename(rel))[0]].append(rel)
    paired, ambiguous = {}, []
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        name = os.path.basename(stem)
        paired[rel] = _find_audio(audio_dir, stem)
        if paired[rel] is None and name != stem:
            flat = _find_audio(audio_dir, name)
            if flat is not None and len(by_name[name]) > 1:
                ambiguous.append((flat, by_name[name]))
            paired[rel] = flat
    if ambiguous:
        lines = sorted({f"{display_path(a)} <- {', '.join(display_path(r) for r in rs)}" for a, rs in ambiguous})
        raise DiscoveryError(
            f"{len(lines)} audio files in {display_path(audio_dir)} match several videos by file name "
            f"only; put each at <audio_dir>/<the video's relative path>.<ext>:\n  " + "\n  ".join(lines[:10]))
    _warn_unpaired(audio_dir, [rel for rel, a in paired.items() if a is None])
    return paired


def _warn_unpaired(audio_dir: Optional[str], rels: List[str]) -> None:
    if audio_dir and rels:
        logging.warning("%s: no separate audio for %d videos (e.g. %s); they use their own audio track",
                        display_path(audio_dir), len(rels), display_path(rels[0]))


def folder_items(root: str, dataset: str = "folder", speaker_from: str = "stem",
                 audio_dir: Optional[str] = None) -> List[VideoItem]:
    """Every video under `root`; a single video file is also accepted."""
    if speaker_from not in ("stem", "parent"):
        raise ValueError(f"speaker_from={speaker_from!r}: expected stem or parent")
    root = os.fsdecode(root)
    if os.path.isfile(root):
        root, rels = os.path.dirname(os.path.abspath(root)), [os.path.basename(root)]
    else:
        rels = _videos(root)
    audio = _pair_audio(audio_dir, rels)
    items = []
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        parent = os.path.basename(os.path.dirname(os.path.join(root, rel)))
        speaker = os.path.basename(stem) if speaker_from == "stem" else parent
        items.append(VideoItem(
            path=os.path.join(root, rel), key=safe_key(stem.replace(os.sep, "__")), dataset=dataset,
            speaker=display_path(speaker), audio_path=audio[rel],
            source=display_path(rel)))
    return items


def hdtf_person(video_id: str) -> Optional[str]:
    """The person of an HDTF video id, None for an id of another form.

    Weekly addresses name the person, the digits after the name number that person's
    series and the last field the video: WDA_BarackObama_000, _001 -> WDA_BarackObama;
    WRA_KristiNoem0_000, WRA_KristiNoem2_001 -> WRA_KristiNoem. Radio ids keep their
    number, the channel: RD_Radio34_000 ... _009 -> RD_Radio34 (spec 7.9: one speaker)."""
    match = _HDTF_ADDRESS.match(video_id) or _HDTF_RADIO.match(video_id)
    return match.group(1) if match else None


def hdtf_items(root: str, audio_dir: Optional[str] = None) -> List[VideoItem]:
    """HDTF raw videos <root>/*.mp4; key = the video id, speaker = its person
    (`hdtf_person`; the video id, with a counted warning, for ids of another form)."""
    root = os.fsdecode(root)
    rels = [r for r in _videos(root) if os.sep not in r]
    audio = _pair_audio(audio_dir, rels)
    items, unnamed = [], []
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        key = safe_key(stem)
        person = hdtf_person(stem)
        if person is None:
            unnamed.append(display_path(rel))
        items.append(VideoItem(path=os.path.join(root, rel), key=key, dataset="hdtf", speaker=person or key,
                               audio_path=audio[rel], source=display_path(rel)))
    if unnamed:
        logging.warning("%s: %d HDTF videos are not named <WDA|WRA>_<Name>[k]_<nnn> or RD_Radio<n>_<nnn> "
                        "(e.g. %s): their speaker is the video id, so one person's videos may land "
                        "in both splits", display_path(root), len(unnamed), unnamed[0])
    return items


def mead_items(root: str, audio_dir: Optional[str] = None) -> List[VideoItem]:
    """MEAD front videos in either layout (module docstring); other files are ignored."""
    root = os.fsdecode(root)
    items, ignored, unpaired = [], 0, []
    for rel in _videos(root):
        parts = rel.split(os.sep)
        stem = os.path.splitext(parts[-1])[0]
        flat = _MEAD_NAME.match(stem)
        # MEAD names are unique per clip: no lookup here can pair two videos with one file.
        by_path = _find_audio(audio_dir, os.path.splitext(rel)[0])
        if flat:
            actor, emotion, level, number = flat.groups()
            beside = os.path.join(os.path.dirname(os.path.dirname(os.path.join(root, rel))), "audio")
            audio_path = by_path or _find_audio(audio_dir or beside, stem)
        elif (len(parts) >= 6 and parts[-5:-3] == ["video", "front"] and parts[-2].startswith("level_")
              and parts[-2][6:].isdigit()):
            actor, emotion, level, number = parts[-6], parts[-3], parts[-2][6:], stem
            own_tree = os.path.join(actor, "audio", emotion, parts[-2], number)
            audio_path = (by_path or _find_audio(audio_dir, f"{actor}#{emotion}#level_{level}#{number}")
                          or _find_audio(audio_dir, own_tree)
                          or _find_audio(os.path.join(root, *parts[:-5], "audio", emotion, parts[-2]), number))
        else:
            ignored += 1
            continue
        if emotion not in schema.EMOTIONS:
            ignored += 1
            continue
        if audio_path is None:
            unpaired.append(rel)
        key = safe_key(f"{actor}#{emotion}#level_{int(level)}#{number}")
        items.append(VideoItem(path=os.path.join(root, rel), key=key, dataset="mead", speaker=actor,
                               emotion=emotion, level=int(level), audio_path=audio_path,
                               source=display_path(rel)))
    if ignored:
        logging.warning("%s: %d video files do not follow a MEAD layout and were ignored", root, ignored)
    _warn_unpaired(audio_dir, unpaired)
    return items


def discover(path: str, layout: str = "folder", **kwargs) -> List[VideoItem]:
    """Items of a raw dataset: layout = folder | mead | hdtf (kwargs go to its finder)."""
    finders = {"folder": folder_items, "mead": mead_items, "hdtf": hdtf_items}
    if layout not in finders:
        raise ValueError(f"layout={layout!r}: expected one of {sorted(finders)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{display_path(path)}: no such file or directory")
    return finders[layout](path, **kwargs)
