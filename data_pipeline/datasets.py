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
`audio_dir` overrides where separate audio is looked up (<audio_dir>/<stem>.<ext>);
without separate audio the video's own track is used.

Keys are file-system safe ([A-Za-z0-9._#=+-]); a name that had to be changed (spaces,
non-ASCII, non-UTF-8 bytes) gets a hash of its original bytes so keys stay unique.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import List, Optional

from data_pipeline import schema
from data_pipeline.preprocess import VideoItem
from data_pipeline.video_io import VIDEO_EXTENSIONS, display_path

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


def _find_audio(directory: Optional[str], stem: str) -> Optional[str]:
    if not directory:
        return None
    for ext in AUDIO_EXTENSIONS:
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    return None


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
    items = []
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        parent = os.path.basename(os.path.dirname(os.path.join(root, rel)))
        speaker = os.path.basename(stem) if speaker_from == "stem" else parent
        items.append(VideoItem(
            path=os.path.join(root, rel), key=safe_key(stem.replace(os.sep, "__")), dataset=dataset,
            speaker=display_path(speaker), audio_path=_find_audio(audio_dir, os.path.basename(stem)),
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
    items, unnamed = [], []
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        key = safe_key(stem)
        person = hdtf_person(stem)
        if person is None:
            unnamed.append(display_path(rel))
        items.append(VideoItem(path=os.path.join(root, rel), key=key, dataset="hdtf", speaker=person or key,
                               audio_path=_find_audio(audio_dir, stem), source=display_path(rel)))
    if unnamed:
        logging.warning("%s: %d HDTF videos are not named <WDA|WRA>_<Name>[k]_<nnn> or RD_Radio<n>_<nnn> "
                        "(e.g. %s): their speaker is the video id, so one person's videos may land "
                        "in both splits", display_path(root), len(unnamed), unnamed[0])
    return items


def mead_items(root: str, audio_dir: Optional[str] = None) -> List[VideoItem]:
    """MEAD front videos in either layout (module docstring); other files are ignored."""
    root = os.fsdecode(root)
    items, ignored = [], 0
    for rel in _videos(root):
        parts = rel.split(os.sep)
        stem = os.path.splitext(parts[-1])[0]
        flat = _MEAD_NAME.match(stem)
        if flat:
            actor, emotion, level, number = flat.groups()
            beside = os.path.join(os.path.dirname(os.path.dirname(os.path.join(root, rel))), "audio")
            audio_path = _find_audio(audio_dir or beside, stem)
        elif (len(parts) >= 6 and parts[-5:-3] == ["video", "front"] and parts[-2].startswith("level_")
              and parts[-2][6:].isdigit()):
            actor, emotion, level, number = parts[-6], parts[-3], parts[-2][6:], stem
            audio_path = _find_audio(audio_dir, f"{actor}#{emotion}#level_{level}#{number}") or _find_audio(
                os.path.join(root, *parts[:-5], "audio", emotion, parts[-2]), number)
        else:
            ignored += 1
            continue
        if emotion not in schema.EMOTIONS:
            ignored += 1
            continue
        key = safe_key(f"{actor}#{emotion}#level_{int(level)}#{number}")
        items.append(VideoItem(path=os.path.join(root, rel), key=key, dataset="mead", speaker=actor,
                               emotion=emotion, level=int(level), audio_path=audio_path,
                               source=display_path(rel)))
    if ignored:
        logging.warning("%s: %d video files do not follow a MEAD layout and were ignored", root, ignored)
    return items


def discover(path: str, layout: str = "folder", **kwargs) -> List[VideoItem]:
    """Items of a raw dataset: layout = folder | mead | hdtf (kwargs go to its finder)."""
    finders = {"folder": folder_items, "mead": mead_items, "hdtf": hdtf_items}
    if layout not in finders:
        raise ValueError(f"layout={layout!r}: expected one of {sorted(finders)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{display_path(path)}: no such file or directory")
    return finders[layout](path, **kwargs)
