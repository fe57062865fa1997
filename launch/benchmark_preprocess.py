"""Preprocessing benchmarks: peak memory against video length, and JPEG quality against size.

  python -m launch.benchmark_preprocess memory --minutes 2,20 [--video-size 192] [--size 256] \
      [--workdir /tmp/bench_preprocess_memory]
  python -m launch.benchmark_preprocess jpeg [--qualities 70,75,80,85,90,95,100] \
      [--samples ../shared/data/edtalk_samples] [--every 5]

memory: synthesizes, per length, a talking-face video (the sample identity face drifting
over a `--video-size` square frame, 25 fps, h264) with a 48 kHz stereo AAC track of that
length (speech from the samples, looped), then preprocesses it in a fresh process with
`preprocess.run_local` (one worker, default options but `--size`) and prints that
process's peak RSS (ru_maxrss), its RSS after imports, and what was written.

jpeg: face crops of the sample media, cut as preprocessing cuts them (square around the
detected face, enlarged by 0.1, area-resized to 256), encoded at each quality with
`shards.encode_jpeg` (OpenCV, 4:2:0): bytes per frame, PSNR and SSIM of the whole crop and
PSNR of the mouth (the box around the 68-point mouth landmarks, enlarged by half), and
encode/decode time per frame. Prints markdown tables (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "edtalk_samples"


# --- memory --------------------------------------------------------------------------------

def synthesize_long_video(path: str, minutes: float, samples: pathlib.Path, side: int = 192,
                          rate: int = 48000) -> None:
    """A `minutes` long mp4: the sample face drifting in a side x side frame (25 fps, h264
    ultrafast) and stereo AAC at `rate` Hz, muxed second by second (constant memory)."""
    import av
    import cv2
    import soxr

    from data_pipeline.preprocess import audio

    face = cv2.cvtColor(cv2.imread(str(samples / "identity_source.jpg")), cv2.COLOR_BGR2RGB)
    face = cv2.resize(face, (side * 3 // 4, side * 3 // 4), interpolation=cv2.INTER_AREA)
    speech = soxr.resample(audio.load_audio(samples / "mouth_source.wav"), 16000, rate)
    seconds = int(round(minutes * 60))
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "23"})
        video.width = video.height = side
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="stereo")
        pos = 0
        for s in range(seconds):
            for i in range(25):
                k = 25 * s + i
                canvas = np.full((side, side, 3), 96, np.uint8)
                x = side // 8 + int(round(side / 16 * np.sin(k / 20)))
                y = side // 8 + int(round(side / 20 * np.cos(k / 27)))
                canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                frame.pts = k
                out.mux(video.encode(frame))
            idx = (pos + np.arange(rate)) % len(speech)
            left = speech[idx]
            pcm = np.stack([left, 0.8 * left]).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, pos
            out.mux(sound.encode(frame))
            pos += rate
        out.mux(video.encode())
        out.mux(sound.encode())


def _measure_child(video: str, out: str, size: int) -> dict:
    """Runs in a fresh process: preprocess one video, report memory (kB) and outputs."""
    from data_pipeline import preprocess

    after_imports = _rss_kb()
    item = preprocess.VideoItem(path=video, key="long", source=os.path.basename(video))
    options = preprocess.PreprocessOptions(size=size)
    start = time.perf_counter()
    report = preprocess.run_local([item], out, options, workers=1, progress=False)
    shard_bytes = sum(p.stat().st_size for p in pathlib.Path(out, "shards").glob("*.array_record"))
    return {"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_after_imports_kb": after_imports,
            "seconds": time.perf_counter() - start, "clips": report["clips_written"],
            "skipped": report["items"]["long"]["skipped"], "frames": report["items"]["long"]["stats"].get("frames"),
            "shard_bytes": shard_bytes}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def memory(args) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for minutes in [float(m) for m in args.minutes.split(",")]:
        video = os.path.join(args.workdir, f"long_{minutes:g}min.mp4")
        if not os.path.exists(video):
            t = time.perf_counter()
            synthesize_long_video(video + ".tmp.mp4", minutes, pathlib.Path(args.samples), args.video_size)
            os.replace(video + ".tmp.mp4", video)
            print(f"synthesized {video} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out = os.path.join(args.workdir, f"out_{minutes:g}min")
        subprocess.run(["rm", "-rf", out], check=True)
        child = subprocess.run([sys.executable, "-m", "launch.benchmark_preprocess", "_child", video, out,
                                str(args.size)], cwd=REPO, capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row.update(minutes=minutes, video_bytes=os.path.getsize(video))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print("| video | audio track (48 kHz stereo float32) | frames | clips | shard bytes | RSS after imports | "
          "peak RSS | peak - imports | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        track = r["minutes"] * 60 * 48000 * 2 * 4
        print(f"| {r['minutes']:g} min | {track / 1e6:.0f} MB | {r['frames']} | {r['clips']} | "
              f"{r['shard_bytes'] / 1e6:.1f} MB | {r['rss_after_imports_kb'] / 1024:.0f} MB | "
              f"{r['peak_rss_kb'] / 1024:.0f} MB | {(r['peak_rss_kb'] - r['rss_after_imports_kb']) / 1024:.0f} MB | "
              f"{r['seconds']:.0f} |")


# --- jpeg ----------------------------------------------------------------------------------

def face_crops(samples: pathlib.Path, every: int = 5, size: int = 256) -> dict:
    """{source name: [(crop uint8 (size, size, 3), mouth box (x0, y0, x1, y1))]} from the sample
    media: one crop square per source (around its faces, as preprocessing's tube crop)."""
    import cv2

    from data_pipeline.preprocess import faces, video_io

    sources = {}
    for name in ("uncrop_Obama.mp4", "mouth_source.mp4", "pose_source1.mp4", "expression_source.mp4"):
        frames = [f for k, f in video_io.iter_frames(samples / name) if k % every == 0]
        sources[name] = frames
    portrait = cv2.cvtColor(cv2.imread(str(samples / "uncrop_face.jpg")), cv2.COLOR_BGR2RGB)
    sources["uncrop_face.jpg"] = [portrait]
    out = {}
    for name, frames in sources.items():
        boxes = []
        for frame in frames[:: max(1, len(frames) // 8)]:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            found = faces.face_boxes(gray, faces.detect(gray))
            boxes += list(found[:1])
        h, w = frames[0].shape[:2]
        crop = faces.square_crop(faces.union(np.stack(boxes)), w, h, 0.1)
        items = []
        for frame in frames:
            face = faces.crop_resize(frame, crop, size)
            gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
            found = faces.detect(gray)
            if not len(found):
                continue
            mouth = faces.landmarks(gray, found[0])[48:68]
            (x0, y0), (x1, y1) = mouth.min(0), mouth.max(0)
            pad_x, pad_y = (x1 - x0) / 4, (y1 - y0) / 4
            box = np.int32(np.round([x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y])).clip(0, size)
            items.append((face, box))
        out[name] = items
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def jpeg(args) -> None:
    from skimage.metrics import structural_similarity

    from data_pipeline.records import shards

    crops = face_crops(pathlib.Path(args.samples), args.every)
    qualities = [int(q) for q in args.qualities.split(",")]
    counts = ", ".join(f"{name} {len(items)}" for name, items in crops.items())
    print(f"crops (256², every {args.every}th frame at 25 fps): {counts}\n")
    print("| quality | bytes / frame (mean) | PSNR dB | SSIM | mouth PSNR dB | encode ms | decode ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    per_source = {}
    for q in qualities:
        sizes, psnrs, ssims, mouths, enc, dec = [], [], [], [], [], []
        for name, items in crops.items():
            for face, (x0, y0, x1, y1) in items:
                t = time.perf_counter()
                data = shards.encode_jpeg(face, q)
                t1 = time.perf_counter()
                back = shards.decode_jpeg(data)
                t2 = time.perf_counter()
                enc.append(t1 - t)
                dec.append(t2 - t1)
                sizes.append(len(data))
                psnrs.append(_psnr(face, back))
                ssims.append(structural_similarity(face, back, channel_axis=-1, data_range=255))
                mouths.append(_psnr(face[y0:y1, x0:x1], back[y0:y1, x0:x1]))
                per_source.setdefault(name, {}).setdefault(q, []).append((len(data), psnrs[-1]))
        print(f"| {q} | {np.mean(sizes):,.0f} | {np.mean(psnrs):.2f} | {np.mean(ssims):.4f} | "
              f"{np.mean(mouths):.2f} | {1e3 * np.median(enc):.2f} | {1e3 * np.median(dec):.2f} |")
    print("\nPer source: bytes / frame and PSNR dB\n")
    print("| source | " + " | ".join(f"q{q}" for q in qualities) + " |")
    print("| --- |" + " --- |" * len(qualities))
    for name, by_q in per_source.items():
        cells = [f"{np.mean([s for s, _ in by_q[q]]):,.0f} B, {np.mean([p for _, p in by_q[q]]):.1f}"
                 for q in qualities]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_child":  # internal: the measured process of `memory`
        video, out, size = argv[1:4]
        print(json.dumps(_measure_child(video, out, int(size))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("memory", help="peak RSS of preprocessing against video length")
    m.add_argument("--minutes", default="2,20", help="comma-separated video lengths")
    m.add_argument("--video-size", type=int, default=192, help="side of the synthesized video frames")
    m.add_argument("--size", type=int, default=256, help="crop side of the preprocessed clips")
    m.add_argument("--workdir", default="/tmp/bench_preprocess_memory", help="videos and outputs (kept)")
    m.add_argument("--samples", default=str(SAMPLES))
    j = sub.add_parser("jpeg", help="JPEG size and quality on face crops of the sample media")
    j.add_argument("--qualities", default="70,75,80,85,90,95,100")
    j.add_argument("--every", type=int, default=5, help="use every n-th frame of the videos")
    j.add_argument("--samples", default=str(SAMPLES))
    args = parser.parse_args(argv)
    {"memory": memory, "jpeg": jpeg}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
