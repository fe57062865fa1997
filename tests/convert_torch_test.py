"""Official state_dict <-> Flax variables: exact round trips, complete coverage of the
model's variables, and one clear error for every kind of mismatch."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from edtalk_jax import convert_torch as ct
from edtalk_jax import torch_io
from edtalk_jax.models import build_model, example_inputs

FIXTURES = {"edtalk_gen_s64_w8_seed0": "generator", "edtalk_gen_s256_w16_seed0": "generator",
            "edtalk_lip_pose_s64_w8_seed0": "lip_pose", "audio2lip_seed0": "audio2lip",
            "dis_s64_w8_seed0": "discriminator"}


def _state_dict(parity_dir, name):
    ckpt = torch_io.load_pt(str(parity_dir / f"{name}.pt"))
    return ct.state_dict_of(ckpt, FIXTURES[name])


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), np.dtype(a.dtype).kind), tree)


@pytest.mark.parametrize("name", FIXTURES)
def test_round_trip_is_exact_and_ordered(parity_dir, name):
    kind = FIXTURES[name]
    sd = _state_dict(parity_dir, name)
    assert ct.detect_kind(torch_io.load_pt(str(parity_dir / f"{name}.pt"))) in (kind, "generator", "lip_pose")
    cfg, variables = ct.torch_to_flax(kind, sd)
    back = ct.flax_to_torch(kind, cfg, variables)
    assert list(back) == list(sd)  # the official key order
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_variables_are_exactly_the_model_variables(parity_dir, name):
    """Every leaf the model creates is filled by the converter, with its shape, and nothing else."""
    kind = FIXTURES[name]
    cfg, variables = ct.torch_to_flax(kind, _state_dict(parity_dir, name))
    model = build_model(kind, cfg)
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs(kind, cfg))
    assert _shapes(variables) == _shapes(expected)


def test_inferred_config_of_the_official_full_size_layout():
    """The official widths and sizes come out of the official key table's shapes."""
    sd = {}
    for line in open(_keys_file()):
        if line.startswith("## "):
            section = line.split()[1]
        elif "\t" in line and not line.startswith("#") and section == "EDTalk.pt['gen']":
            key, shape = line.split("\t")[:2]
            sd[key] = np.zeros(eval(shape), np.uint8)  # shapes only
    cfg = ct.infer_config("generator", sd)
    assert cfg == dict(size=256, channels=(512, 512, 512, 512, 256, 128, 64), style_dim=512, lip_dim=20,
                       pose_dim=6, exp_dim=10, eem_hidden=128)
    assert [e.torch_key for e in ct.generator_entries(cfg)] == list(sd)


def _keys_file():
    from tests.conftest import SHARED
    path = SHARED / "design" / "official_state_dict_keys.txt"
    if not path.exists():
        pytest.fail(f"missing {path}")
    return path


def test_mismatches_are_reported_together(parity_dir):
    sd = dict(_state_dict(parity_dir, "edtalk_lip_pose_s64_w8_seed0"))
    del sd["fc.0.bias"]
    sd["dec.surprise.weight"] = np.zeros(3, np.float32)
    sd["dec.convs.1.activate.bias"] = np.zeros((1, 7, 1, 1), np.float32)
    sd["dec.convs.0.conv.blur.kernel"] = np.ones((4, 4), np.float32)
    with pytest.raises(ct.ConversionError) as e:
        ct.torch_to_flax("lip_pose", sd, "my.pt")
    msg = str(e.value)
    assert "my.pt" in msg and "4 problem(s)" in msg
    for needle in ("missing key fc.0.bias", "unexpected key dec.surprise.weight",
                   "dec.convs.1.activate.bias has shape (1, 7, 1, 1)", "buffer dec.convs.0.conv.blur.kernel"):
        assert needle in msg


def test_wrong_kind_is_refused(parity_dir):
    with pytest.raises(ct.ConversionError, match="audio2lip"):
        ct.state_dict_of(torch_io.load_pt(str(parity_dir / "audio2lip_seed0.pt")), "generator", "audio2lip_seed0.pt")
    sd = _state_dict(parity_dir, "edtalk_gen_s64_w8_seed0")
    with pytest.raises(ct.ConversionError, match="unexpected key dec.fineadainresblock"):
        ct.torch_to_flax("lip_pose", sd)  # the emotional generator is not a lip-pose one
    with pytest.raises(ct.ConversionError, match="not an EDTalk checkpoint"):
        ct.detect_kind({"model": {}}, "x.pt")


def test_vgg19_from_a_torchvision_layout(torch):
    """A torchvision vgg19 state_dict (with classifier and the convs past relu5_1) converts,
    and the Flax features equal torch's at the five slice ends."""
    torch.manual_seed(0)
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512):
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
            cin = v
    features = torch.nn.Sequential(*layers)
    sd = {f"features.{k}": v.numpy() for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = np.zeros((8, 8), np.float32)
    cfg, variables = ct.torch_to_flax("vgg19", sd)
    x = np.random.RandomState(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h, ref = (torch.from_numpy(x) + 1) / 2, []
    h = (h - mean) / std
    with torch.no_grad():
        for i, layer in enumerate(features):
            h = layer(h)
            if i in (1, 6, 11, 20, 29):
                ref.append(h.numpy())
    from edtalk_jax.models.vgg import PerceptualNetwork
    out = PerceptualNetwork(scales=(1.0,)).apply(variables, np.transpose(x, (0, 2, 3, 1)))[0]
    for a, b in zip(out, ref):
        np.testing.assert_allclose(np.transpose(np.asarray(a), (0, 3, 1, 2)), b, rtol=1e-4, atol=1e-4)


def test_export_with_torch_and_reload(parity_dir, tmp_path, torch):
    kind, cfg, variables = ct.load_official(str(parity_dir / "audio2lip_seed0.pt"))
    out = tmp_path / "a2l.pt"
    ct.save_official(str(out), kind, cfg, variables)
    reloaded = torch.load(str(out), weights_only=True)["audio2lip"]
    original = torch_io.load_pt(str(parity_dir / "audio2lip_seed0.pt"))["audio2lip"]
    assert list(reloaded) == list(original)
    for k in original:
        np.testing.assert_array_equal(reloaded[k].numpy(), original[k], err_msg=k)


def test_convert_cli_round_trip(parity_dir, tmp_path, torch):
    src = parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt"
    run = lambda *a: subprocess.run([sys.executable, "-m", "launch.convert", *map(str, a)],
                                    capture_output=True, text=True)
    r = run("to-flax", src, tmp_path / "lp")
    assert r.returncode == 0, r.stderr
    assert "lip_pose" in r.stdout
    r = run("to-torch", tmp_path / "lp", tmp_path / "lp.pt")
    assert r.returncode == 0, r.stderr
    a, b = torch_io.load_pt(str(src))["gen"], torch_io.load_pt(str(tmp_path / "lp.pt"))["gen"]
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(src.read_bytes()[:5000])
    r = run("to-flax", bad, tmp_path / "x")
    assert r.returncode == 1 and "trunc.pt" in r.stderr
