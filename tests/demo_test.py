"""The main job end to end at a tiny size: every mode renders a video with audio."""

import json

import av
import pytest

from configs import base
from edtalk_jax import demo, model_io
from edtalk_jax.models import build_model, example_inputs


def _config():
    config = base.get_config("size=32,width_div=16")
    config.data.synthetic.speakers = 3
    config.data.synthetic.clips_per_speaker = 2
    config.data.synthetic.frames_per_clip = 12
    config.data.workers = 1
    return config


def test_demo_renders_every_mode(tmp_path):
    report = demo.run_demo(_config(), str(tmp_path), chunk=4, max_frames=10, progress=False)
    assert set(report["modes"]) == {"video", "audio"} | {f"emotion_{e}" for e in (
        "angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")}
    assert "random init" in report["model"]
    with av.open(report["modes"]["audio"]["video"]) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        assert sum(1 for _ in c.decode(video=0)) == 10
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["frames"] == 10
    assert (tmp_path / "demo" / "contact_sheet.png").stat().st_size > 0


def test_demo_takes_the_kind_from_a_checkpoint(tmp_path):
    """A lip-pose checkpoint with the default (emotional) config: no emotion modes."""
    import jax
    cfg = dict(size=32, width_div=16, exp_dim=0)
    model = build_model("lip_pose", cfg)
    variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), *example_inputs("lip_pose", cfg)))
    model_io.save_model(str(tmp_path / "lp"), "lip_pose", {**cfg, "channels": model.channels}, variables)
    report = demo.run_demo(_config(), str(tmp_path / "w"), checkpoint=str(tmp_path / "lp"), chunk=4,
                           max_frames=4, progress=False)
    assert set(report["modes"]) == {"video", "audio"} and report["model"] == str(tmp_path / "lp")
    with pytest.raises(ValueError, match="expected one of"):
        demo.run_demo(_config(), str(tmp_path / "w"), audio2lip=str(tmp_path / "lp"), progress=False)
