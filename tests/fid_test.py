"""FID (edtalk_jax.fid, models.inception) against self-contained references of pytorch-fid 0.3.0.

No pytorch-fid or torchvision here (CI's CPU torch has no working torchvision). The references
are transcribed in this file:

* `_FIDInceptionV3`: pytorch-fid's `InceptionV3([3], resize_input=True, normalize_input=True,
  use_fid_inception=True)` in plain `torch.nn`: torchvision's `Inception3` trunk (BasicConv2d =
  Conv2d without bias + BatchNorm2d(eps=0.001) + ReLU; the stem's 3x3 stride-2 max pools;
  InceptionB/D as Mixed_6a/7a) with pytorch-fid's FIDInceptionA/C/E_1 (branch_pool input
  average-pooled with count_include_pad=False) and FIDInceptionE_2 (max-pooled) blocks; input
  resized to 299 (bilinear, align_corners=False), mapped 2x - 1; adaptive average pool -> 2048.
  Its module names give exactly the keys of `pt_inception-2015-12-05-6726825d.pth`
  (`Conv2d_1a_3x3.conv.weight`, ..., `fc.weight` 1008 x 2048); the weights are random (seeded),
  written with `torch.save` and read back by our loader.
* `_calculate_frechet_distance`: pytorch-fid's `calculate_frechet_distance`, line for line.
"""

import warnings

import numpy as np
import pytest
from scipy import linalg

from edtalk_jax import fid as fid_lib
from edtalk_jax import torch_io
from edtalk_jax.convert_torch import ConversionError
from edtalk_jax.models import inception

# ------------------------------------------------------------------ the torch reference network
# torchvision's Inception3 / pytorch-fid's FID blocks as tables. A conv is
# (attribute name, in channels, out channels, kernel, stride, padding); a branch is a sequence
# of convs, pools ("avg": 3x3/1 pad 1 count_include_pad=False; "max": 3x3/1 pad 1; "max_s2":
# 3x3/2 no pad) and pairs of convs run on the same input and concatenated (InceptionE).


def _cv(name, cin, cout, k, s=1, p=0):
    return (name, cin, cout, k, s, p)


def _block_a(cin, pool_features):  # FIDInceptionA
    return ((_cv("branch1x1", cin, 64, 1),),
            (_cv("branch5x5_1", cin, 48, 1), _cv("branch5x5_2", 48, 64, 5, p=2)),
            (_cv("branch3x3dbl_1", cin, 64, 1), _cv("branch3x3dbl_2", 64, 96, 3, p=1),
             _cv("branch3x3dbl_3", 96, 96, 3, p=1)),
            ("avg", _cv("branch_pool", cin, pool_features, 1)))


def _block_b(cin):  # torchvision InceptionB
    return ((_cv("branch3x3", cin, 384, 3, s=2),),
            (_cv("branch3x3dbl_1", cin, 64, 1), _cv("branch3x3dbl_2", 64, 96, 3, p=1),
             _cv("branch3x3dbl_3", 96, 96, 3, s=2)),
            ("max_s2",))


def _block_c(cin, c7):  # FIDInceptionC
    def h(name, a, b):  # 1x7
        return _cv(name, a, b, (1, 7), p=(0, 3))

    def v(name, a, b):  # 7x1
        return _cv(name, a, b, (7, 1), p=(3, 0))
    return ((_cv("branch1x1", cin, 192, 1),),
            (_cv("branch7x7_1", cin, c7, 1), h("branch7x7_2", c7, c7), v("branch7x7_3", c7, 192)),
            (_cv("branch7x7dbl_1", cin, c7, 1), v("branch7x7dbl_2", c7, c7), h("branch7x7dbl_3", c7, c7),
             v("branch7x7dbl_4", c7, c7), h("branch7x7dbl_5", c7, 192)),
            ("avg", _cv("branch_pool", cin, 192, 1)))


def _block_d(cin):  # torchvision InceptionD
    return ((_cv("branch3x3_1", cin, 192, 1), _cv("branch3x3_2", 192, 320, 3, s=2)),
            (_cv("branch7x7x3_1", cin, 192, 1), _cv("branch7x7x3_2", 192, 192, (1, 7), p=(0, 3)),
             _cv("branch7x7x3_3", 192, 192, (7, 1), p=(3, 0)), _cv("branch7x7x3_4", 192, 192, 3, s=2)),
            ("max_s2",))


def _block_e(cin, pool):  # FIDInceptionE_1 (pool "avg"), FIDInceptionE_2 (pool "max")
    def pair(a, b, c):
        return (_cv(a, c, 384, (1, 3), p=(0, 1)), _cv(b, c, 384, (3, 1), p=(1, 0)))
    return ((_cv("branch1x1", cin, 320, 1),),
            (_cv("branch3x3_1", cin, 384, 1), pair("branch3x3_2a", "branch3x3_2b", 384)),
            (_cv("branch3x3dbl_1", cin, 448, 1), _cv("branch3x3dbl_2", 448, 384, 3, p=1),
             pair("branch3x3dbl_3a", "branch3x3dbl_3b", 384)),
            (pool, _cv("branch_pool", cin, 192, 1)))


_STEM = (_cv("Conv2d_1a_3x3", 3, 32, 3, s=2), _cv("Conv2d_2a_3x3", 32, 32, 3),
         _cv("Conv2d_2b_3x3", 32, 64, 3, p=1), "max_s2",
         _cv("Conv2d_3b_1x1", 64, 80, 1), _cv("Conv2d_4a_3x3", 80, 192, 3), "max_s2")
_MIXED = (("Mixed_5b", _block_a(192, 32)), ("Mixed_5c", _block_a(256, 64)), ("Mixed_5d", _block_a(288, 64)),
          ("Mixed_6a", _block_b(288)), ("Mixed_6b", _block_c(768, 128)), ("Mixed_6c", _block_c(768, 160)),
          ("Mixed_6d", _block_c(768, 160)), ("Mixed_6e", _block_c(768, 192)), ("Mixed_7a", _block_d(768)),
          ("Mixed_7b", _block_e(1280, "avg")), ("Mixed_7c", _block_e(2048, "max")))
# BasicConv2d per block (torchvision's counts): stem 5, A 7, B 4, C 10, D 6, E 9 -> 94
_N_CONVS = 94
_N_FILE_KEYS = 5 * _N_CONVS + 2  # conv.weight + bn.{weight,bias,running_mean,running_var} each; fc.weight/bias


def _build_reference(torch):
    """pytorch-fid's FID InceptionV3 (output block 3) as a torch module, eval mode."""
    nn, F = torch.nn, torch.nn.functional

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, k, s, p):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def add_convs(module, steps):
        for step in steps:
            if isinstance(step, tuple) and isinstance(step[0], tuple):  # a pair
                add_convs(module, step)
            elif isinstance(step, tuple):
                module.add_module(step[0], BasicConv2d(*step[1:]))

    def run(module, steps, x):
        for step in steps:
            if step == "avg":
                x = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            elif step == "max":
                x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            elif step == "max_s2":
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            elif isinstance(step[0], tuple):
                x = torch.cat([getattr(module, conv[0])(x) for conv in step], 1)
            else:
                x = getattr(module, step[0])(x)
        return x

    class Mixed(nn.Module):
        def __init__(self, branches):
            super().__init__()
            self.branches = branches
            for branch in branches:
                add_convs(self, branch)

        def forward(self, x):
            return torch.cat([run(self, branch, x) for branch in self.branches], 1)

    class FIDInceptionV3(nn.Module):
        def __init__(self):
            super().__init__()
            add_convs(self, _STEM)
            for name, branches in _MIXED:
                self.add_module(name, Mixed(branches))
            self.fc = nn.Linear(2048, 1008)  # in the file, unused by the features

        def forward(self, x):  # (B, 3, H, W) in [0, 1] -> (B, 2048)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = run(self, _STEM, 2 * x - 1)
            for name, _ in _MIXED:
                x = getattr(self, name)(x)
            return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    return FIDInceptionV3().eval()


def _randomise(model, torch):
    """Every conv/linear weight He-scaled normal; BatchNorm affine and running statistics random."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("conv.weight") or name == "fc.weight":
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("bn.weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:  # bn.bias, running_mean, fc.bias
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def reference(torch, tmp_path_factory):
    """(the torch FID Inception with random weights, the .pth written from its state dict)."""
    model = _build_reference(torch)
    _randomise(model, torch)
    path = tmp_path_factory.mktemp("fid") / inception.FID_WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def frames():
    """5 small random RGB frames (upsampled to 299 inside the network)."""
    return np.random.default_rng(0).integers(0, 256, (5, 37, 45, 3), dtype=np.uint8)


def _torch_features(model, frames, torch):
    """pytorch-fid's get_activations: ToTensor (x / 255, NCHW), model(batch) pool3 features."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return model(x).numpy().astype(np.float64)


@pytest.fixture(scope="module")
def features(reference, frames, torch):
    """(ours (batch_size 3: the last batch padded), the torch reference's, our variables)."""
    model, path = reference
    variables = inception.load_fid_inception(str(path))
    return fid_lib.inception_features(frames, variables, batch_size=3), _torch_features(model, frames, torch), variables


def test_reference_has_the_weight_file_layout(reference):
    """The transcription's state dict is pt_inception-2015-12-05-6726825d.pth's key set (plus
    torch's BatchNorm counters, never read), and its convs are our loader's."""
    model, path = reference
    keys = set(model.state_dict())
    counters = {k for k in keys if k.endswith(".bn.num_batches_tracked")}
    file_keys = keys - counters
    assert len(counters) == _N_CONVS and len(file_keys) == _N_FILE_KEYS == 472
    convs = {k[:-len(".conv.weight")] for k in file_keys if k.endswith(".conv.weight")}
    assert len(convs) == _N_CONVS
    assert file_keys == {f"{c}.{s}" for c in convs for s in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                                             "bn.running_var")} | {"fc.weight", "fc.bias"}
    assert {"Conv2d_1a_3x3", "Conv2d_4a_3x3", "Mixed_5b.branch1x1", "Mixed_5b.branch_pool", "Mixed_6a.branch3x3",
            "Mixed_6e.branch7x7dbl_5", "Mixed_7a.branch7x7x3_4", "Mixed_7b.branch3x3dbl_3b",
            "Mixed_7c.branch_pool"} <= convs
    assert not any(k.startswith("AuxLogits") for k in keys)  # aux_logits=False
    assert convs == {".".join(p) for p in inception.conv_paths()}
    sd = model.state_dict()
    assert tuple(sd["fc.weight"].shape) == (1008, 2048) and tuple(sd["fc.bias"].shape) == (1008,)
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)
    assert tuple(sd["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert all(m.eps == 0.001 for m in model.modules() if type(m).__name__ == "BatchNorm2d")
    assert set(torch_io.load_pt(str(path))) == keys


def test_file_layout_and_variables(reference):
    _, path = reference
    raw = torch_io.load_pt(str(path))
    assert "Conv2d_1a_3x3.conv.weight" in raw and "Mixed_7c.branch_pool.bn.running_var" in raw and "fc.weight" in raw
    variables = inception.load_fid_inception(str(path))
    assert set(variables) == {"params", "batch_stats"}
    # OIHW -> HWIO; BatchNorm statistics as stored
    np.testing.assert_array_equal(variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
                                  raw["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7b"]["branch3x3dbl_3b"]["bn"]["var"],
                                  raw["Mixed_7b.branch3x3dbl_3b.bn.running_var"])
    n_convs = len(inception.conv_paths())
    assert n_convs == _N_CONVS  # torchvision Inception3 without AuxLogits
    assert len(raw) == 6 * n_convs + 2  # conv.weight + 5 BatchNorm tensors each (torch's counter too), fc.weight/bias


def test_pool3_features_match_torch_reference(features):
    ours, ref, _ = features
    assert ours.shape == ref.shape == (5, 2048) and ours.dtype == np.float64
    scale = np.abs(ref).max()
    assert scale > 1e-2 and np.std(ref) > 1e-3 * scale  # non-degenerate random network
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * scale, (err, scale)


@pytest.mark.parametrize("hw,out", [((37, 45), 299), ((320, 411), 299), ((256, 256), 299), ((299, 299), 299),
                                    ((8, 5), 13)])
def test_resize_matches_torch_interpolate(torch, hw, out):
    x = np.random.default_rng(1).random((2, *hw, 3), dtype=np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(out, out), mode="bilinear",
                                           align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(inception.resize_bilinear(x, out)), want, atol=1e-6)


# ------------------------------------------------------------------ the Fréchet distance reference
def _calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0's `fid_score.calculate_frechet_distance`, transcribed (its first
    `sqrtm` passes `disp=False`, deprecated since scipy 1.16: that warning is silenced)."""
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape, "Training and test mean vectors have different lengths"
    assert sigma1.shape == sigma2.shape, "Training and test covariances have different dimensions"
    diff = mu1 - mu2
    # Product might be almost singular
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        msg = ("fid calculation produces singular product; "
               "adding %s to diagonal of cov estimates") % eps
        print(msg)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    # Numerical error might give slight imaginary component
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError("Imaginary component {}".format(m))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return (diff.dot(diff) + np.trace(sigma1)
            + np.trace(sigma2) - 2 * tr_covmean)


def test_frechet_distance_matches_reference():
    rng = np.random.default_rng(2)
    for d, n in ((16, 64), (32, 6)):  # full rank; rank-deficient (few samples, like FID over few frames)
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 1.3 + 0.2
        stats = fid_lib.statistics(a) + fid_lib.statistics(b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular product (rank-deficient case)
            want = _calculate_frechet_distance(*stats)
            got = fid_lib.frechet_distance(*stats)
            same = fid_lib.frechet_distance(stats[0], stats[1], stats[0], stats[1])
        assert isinstance(got, float)
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert same == pytest.approx(0, abs=1e-6 * np.trace(stats[1]))


def test_frechet_distance_eps_offset_when_sqrtm_not_finite(monkeypatch, capsys):
    """A non-finite root is retried with eps on both diagonals, as pytorch-fid (which prints)."""
    rng = np.random.default_rng(3)
    stats = fid_lib.statistics(rng.normal(size=(40, 8))) + fid_lib.statistics(rng.normal(size=(40, 8)) + 1)
    real_sqrtm = linalg.sqrtm
    calls = []

    def sqrtm(a, *args, **kwargs):  # the first root of each distance "fails"
        calls.append(a)
        out = real_sqrtm(a) * (np.nan if len(calls) % 2 else 1.0)
        return (out, 0.0) if kwargs.get("disp") is False else out

    monkeypatch.setattr(linalg, "sqrtm", sqrtm)
    want = _calculate_frechet_distance(*stats, eps=1e-2)
    assert "adding 0.01 to diagonal" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="adding 0.01 to diagonal"):
        got = fid_lib.frechet_distance(*stats, eps=1e-2)
    assert len(calls) == 4
    np.testing.assert_allclose(calls[3], calls[1])  # the same offset product
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fid_statistics_of_reference_features(features, frames, monkeypatch):
    """fid = frechet_distance(statistics of each set), the statistics the reference features give.
    (The distance itself is checked above on small statistics: scipy's sqrtm of a 2048 x 2048
    product takes a minute or more on 2 cores.)"""
    _, ref, variables = features
    calls = []
    monkeypatch.setattr(fid_lib, "frechet_distance", lambda *stats: calls.append(stats) or 1.25)
    assert fid_lib.fid(frames[:2], frames[2:], variables, batch_size=3) == 1.25  # the program compiled above
    (mu1, sigma1, mu2, sigma2), = calls
    for (mu, sigma), feats in (((mu1, sigma1), ref[:2]), ((mu2, sigma2), ref[2:])):
        scale = np.abs(feats).max()
        np.testing.assert_allclose(mu, np.mean(feats, axis=0), rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=0, atol=1e-4 * scale ** 2)
        assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (2048, 2048)
    with pytest.raises(ValueError, match="at least 2 frames per set.*pred_frames has 1"):
        fid_lib.fid(frames[:1], frames[2:], variables)
    with pytest.raises(ValueError, match="uint8"):
        fid_lib.inception_features(frames.astype(np.float32), variables)


# ------------------------------------------------------------------ loader
def _resave(torch, path, tmp_path, edit):
    sd = {k: torch.from_numpy(np.array(v)) for k, v in torch_io.load_pt(str(path)).items()}
    edit(sd)
    out = tmp_path / "edited.pth"
    torch.save(sd, out)
    return str(out)


def test_loader_optional_keys(reference, torch, tmp_path):
    """fc.* and num_batches_tracked are never read: files with or without them load the same."""
    _, path = reference

    def strip(sd):
        for k in [k for k in sd if k.startswith("fc.") or k.endswith("num_batches_tracked")]:
            del sd[k]

    got = inception.load_fid_inception(_resave(torch, path, tmp_path, strip))
    want = inception.load_fid_inception(str(path))
    np.testing.assert_array_equal(got["params"]["Mixed_6e"]["branch7x7dbl_5"]["conv"]["kernel"],
                                  want["params"]["Mixed_6e"]["branch7x7dbl_5"]["conv"]["kernel"])


def test_loader_rejects_missing_wrong_shape_and_unexpected_keys(reference, torch, tmp_path):
    _, path = reference

    def edit(sd):
        del sd["Mixed_6b.branch7x7_2.bn.running_mean"]
        sd["Mixed_7c.branch_pool.conv.weight"] = sd["Mixed_7c.branch_pool.conv.weight"][:, :100]
        sd["AuxLogits.fc.weight"] = torch.zeros(3)

    bad = _resave(torch, path, tmp_path, edit)
    with pytest.raises(ConversionError) as e:
        inception.load_fid_inception(bad)
    msg = str(e.value)
    assert bad in msg and "3 problem(s)" in msg
    assert "missing key Mixed_6b.branch7x7_2.bn.running_mean" in msg
    assert "key Mixed_7c.branch_pool.conv.weight has shape (192, 100, 1, 1), expected (192, 2048, 1, 1)" in msg
    assert "unexpected key AuxLogits.fc.weight" in msg
    with pytest.raises(ValueError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception.load_fid_inception("")
