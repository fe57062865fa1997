"""LSE-C / LSE-D: SyncNetV2 against a torch transcription of syncnet_python's `S`, `lse` against
the official evaluate loop, and the syncnet_v2.model loader."""

import math

import cv2
import numpy as np
import pytest
import python_speech_features
from scipy import signal

from edtalk_jax import convert_torch as ct
from edtalk_jax import lse as lse_mod
from edtalk_jax import torch_io
from edtalk_jax.models.syncnet_v2 import load_syncnet_v2


def official_s(torch):
    """syncnet_python SyncNetModel.S, transcribed."""
    nn = torch.nn

    class S(nn.Module):
        def __init__(self, num_layers_in_fc_layers=1024):
            super().__init__()
            self.netcnnaud = nn.Sequential(
                nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
                nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                nn.BatchNorm2d(192), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
                nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
                nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)), nn.BatchNorm2d(512), nn.ReLU())
            self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                          nn.Linear(512, num_layers_in_fc_layers))
            self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                          nn.Linear(512, num_layers_in_fc_layers))
            self.netcnnlip = nn.Sequential(
                nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
                nn.BatchNorm3d(96), nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.BatchNorm3d(256), nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                nn.ReLU(inplace=True),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                nn.ReLU(inplace=True),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0), nn.BatchNorm3d(512), nn.ReLU(inplace=True))

        def forward_aud(self, x):
            mid = self.netcnnaud(x)
            return self.netfcaud(mid.view((mid.size()[0], -1)))

        def forward_lip(self, x):
            mid = self.netcnnlip(x)
            return self.netfclip(mid.view((mid.size()[0], -1)))

    return S()


def official_evaluate(torch, model, images, audio, batch_size=20, vshift=15):
    """SyncNetInstance.evaluate after its ffmpeg steps: `images` the list cv2.imread gives (BGR
    uint8 224x224), `audio` the int16 array wavfile.read gives."""
    def calc_pdist(feat1, feat2, vshift=10):
        win_size = vshift * 2 + 1
        feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
        dists = []
        for i in range(0, len(feat1)):
            dists.append(torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win_size, 1),
                                                               feat2p[i:i + win_size, :]))
        return dists

    model.eval()
    im = np.stack(images, axis=3)
    im = np.expand_dims(im, axis=0)
    im = np.transpose(im, (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    mfcc = zip(*python_speech_features.mfcc(audio, 16000))
    mfcc = np.stack([np.array(i) for i in mfcc])
    cc = np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0)
    cct = torch.from_numpy(cc.astype(float)).float()
    min_length = min(len(images), math.floor(len(audio) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            im_batch = [imtv[:, :, vframe:vframe + 5, :, :] for vframe in range(i, min(lastframe, i + batch_size))]
            im_feat.append(model.forward_lip(torch.cat(im_batch, 0)))
            cc_batch = [cct[:, :, :, vframe * 4:vframe * 4 + 20] for vframe in range(i, min(lastframe, i + batch_size))]
            cc_feat.append(model.forward_aud(torch.cat(cc_batch, 0)))
    im_feat = torch.cat(im_feat, 0)
    cc_feat = torch.cat(cc_feat, 0)
    dists = calc_pdist(im_feat, cc_feat, vshift=vshift)
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    offset = vshift - minidx
    conf = torch.median(mdist) - minval
    fdist = np.stack([dist[minidx].numpy() for dist in dists])
    fconf = torch.median(mdist).numpy() - fdist
    fconfm = signal.medfilt(fconf, kernel_size=9)
    return dict(offset=int(offset), conf=float(conf), minval=float(minval), fconfm=fconfm,
                im_feat=im_feat.numpy(), cc_feat=cc_feat.numpy(), mdist=mdist.numpy())


@pytest.fixture(scope="module")
def reference(torch, tmp_path_factory):
    """A random-weight S with randomised BatchNorm statistics (calibrated on random inputs so
    activations stay O(1), then perturbed), saved as a flat state_dict like syncnet_v2.model
    (torch's current zip format; the loader reads the legacy format as well)."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = official_s(torch)
    rng = np.random.default_rng(0)
    lips = torch.from_numpy(rng.uniform(0, 255, (2, 3, 5, 224, 224)).astype(np.float32))
    mfcc = torch.from_numpy(rng.normal(0, 10, (4, 1, 13, 20)).astype(np.float32))
    bns = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, bns):
                m.momentum = None  # running stats := this batch's statistics
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model.forward_lip(lips)
        model.forward_aud(mfcc)
        for m in model.modules():
            if isinstance(m, bns):
                m.running_mean.add_(0.1 * torch.randn_like(m.running_mean) * m.running_var.sqrt())
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.7, 1.3)).add_(1e-3)
        # Raw embeddings share a large common part, as trained ones do (else every distance is
        # about |video emb| and the zero-padded shifts win): one bias for both heads, the lip
        # head's weights scaled to the audio head's spread.
        bias = torch.randn(1024)
        model.netfclip[3].bias.copy_(bias * 300 / bias.norm())
        model.netfcaud[3].bias.copy_(bias * 300 / bias.norm())
        model.netfclip[3].weight.mul_(0.3)
    model.eval()
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(model.state_dict(), path)
    return model, str(path)


@pytest.fixture(scope="module")
def clip():
    """12 frames of 96x96 RGB crops (resized to 224 inside) and 11.5 frames of audio: the audio
    sets the length (min_length 11, 6 windows)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (1, 96, 96, 3))
    frames = np.clip(base + rng.integers(-60, 60, (12, 96, 96, 3)), 0, 255).astype(np.uint8)
    t = np.arange(int(11.5 * 640)) / 16000
    speech = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.normal(size=t.shape)
    audio = np.clip(np.round(speech * 32768), -32768, 32767).astype(np.int16)
    return frames, audio


@pytest.fixture(scope="module")
def official(torch, reference, clip):
    model, _ = reference
    frames, audio = clip
    images = [cv2.resize(f, (224, 224))[..., ::-1] for f in frames]  # crop_video's resize; imread's BGR
    return official_evaluate(torch, model, images, audio, batch_size=4)


@pytest.mark.filterwarnings("ignore:kernel_size exceeds volume extent")
def test_embeddings_match_official(reference, clip, official):
    _, path = reference
    frames, audio = clip
    variables = load_syncnet_v2(path)
    assert set(variables) == {"params", "batch_stats", "unused"}
    wav = audio.astype(np.float32) / 32768  # float input: quantised back to the same int16
    video, aud = lse_mod.embeddings(frames, wav, variables, batch_size=4)  # 6 windows: 4 + (2 padded to 4)
    assert video.shape == aud.shape == (6, 1024) and video.dtype == np.float32
    for got, want in ((video, official["im_feat"]), (aud, official["cc_feat"])):
        assert np.abs(want).max() > 0.1  # not a degenerate all-zero network
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.filterwarnings("ignore:kernel_size exceeds volume extent")
def test_lse_matches_official_evaluate(reference, clip, official):
    _, path = reference
    frames, audio = clip
    variables = load_syncnet_v2(path)
    out = lse_mod.lse(frames, audio.astype(np.float32) / 32768, variables, batch_size=4, framewise=True)
    assert set(out) == {"lse_d", "lse_c", "offset", "frames", "frame_conf"}
    assert out["frames"] == 6 and isinstance(out["offset"], int)
    mdist = official["mdist"]
    assert np.sort(mdist)[1] - mdist.min() > 1e-3 * mdist.min()  # a unique best shift
    assert out["offset"] == official["offset"]
    scale = official["minval"]
    assert abs(out["lse_d"] - official["minval"]) < 1e-4 * scale
    assert abs(out["lse_c"] - official["conf"]) < 1e-4 * scale
    np.testing.assert_allclose(out["frame_conf"], official["fconfm"], atol=1e-4 * scale)
    # int16 audio (as wavfile.read gives it) scores the same
    again = lse_mod.lse(frames, audio, variables, batch_size=4)
    assert again["offset"] == out["offset"] and abs(again["lse_d"] - out["lse_d"]) < 1e-5 * scale


def test_scores_calc_pdist(torch):
    """sync_distances / scores against the official calc_pdist + reductions on random features,
    including an even number of shifts' neighbours and a clip shorter than vshift."""
    rng = np.random.default_rng(2)
    for n, vshift in ((3, 15), (40, 15), (9, 2)):
        v = rng.normal(0, 1, (n, 16)).astype(np.float32)
        a = (v + rng.normal(0, 0.5, (n, 16))).astype(np.float32)
        a = np.roll(a, 1, axis=0)  # audio window i+1 matches video window i: offset -1
        tv, ta = torch.from_numpy(v), torch.from_numpy(a)
        feat2p = torch.nn.functional.pad(ta, (0, 0, vshift, vshift))
        dists = torch.stack([torch.nn.functional.pairwise_distance(tv[[i], :].repeat(2 * vshift + 1, 1),
                                                                   feat2p[i:i + 2 * vshift + 1, :])
                             for i in range(n)])
        np.testing.assert_allclose(lse_mod.sync_distances(v, a, vshift), dists.numpy(), rtol=1e-5)
        mdist = dists.mean(0)
        minval, minidx = torch.min(mdist, 0)
        got = lse_mod.scores(v, a, vshift)
        assert got["offset"] == vshift - int(minidx) and got["frames"] == n
        np.testing.assert_allclose([got["lse_d"], got["lse_c"]],
                                   [float(minval), float(torch.median(mdist) - minval)], rtol=1e-5, atol=1e-6)
        if n == 40:
            assert got["offset"] == -1


def test_too_short_clips_are_refused():
    frames = np.zeros((5, 224, 224, 3), np.uint8)
    wav = np.zeros(16000, np.float32)
    with pytest.raises(ValueError, match="at least 6 video frames.*got 5"):
        lse_mod.lse(frames, wav, variables=None)
    frames = np.zeros((30, 224, 224, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 3840 audio samples.*got 3839 samples"):
        lse_mod.lse(frames, wav[:3839], variables=None)
    with pytest.raises(ValueError, match="uint8 RGB face crops"):
        lse_mod.lse(frames.astype(np.float32), wav, variables=None)
    with pytest.raises(ValueError, match="mono audio"):
        lse_mod.lse(frames, np.zeros((16000, 2), np.float32), variables=None)
    assert lse_mod.window_count(30, 16000) == 20  # min(30, 25) - 5
    assert lse_mod.window_count(6, 6 * 640) == 1


def test_to_int16_is_ffmpeg_pcm_s16le():
    x = np.array([0.0, 1.0, -1.0, 2.0, 0.5 / 32768, 1.5 / 32768, -0.99999], np.float32)
    np.testing.assert_array_equal(lse_mod.to_int16(x), [0, 32767, -32768, 32767, 0, 2, -32768])
    mf = lse_mod.mfcc_features(np.zeros(3200, np.float32) + 0.01)
    assert mf.shape == (13, 19) and mf.dtype == np.float32


def test_loader_reports_every_problem(torch, reference, tmp_path):
    model, _ = reference
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.model"
    torch.save(sd, path, _use_new_zipfile_serialization=False)  # like the released file: legacy
    # pickle format, no num_batches_tracked
    variables = load_syncnet_v2(str(path))
    assert variables["params"]["netcnnlip"]["0"]["weight"].shape == (5, 7, 7, 3, 96)
    np.testing.assert_array_equal(variables["params"]["netcnnlip"]["0"]["weight"],
                                  sd["netcnnlip.0.weight"].numpy().transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["netfcaud"]["1"]["var"],
                                  sd["netfcaud.1.running_var"].numpy())

    del sd["netcnnlip.9.running_var"]
    sd["netcnnaud.18.weight"] = torch.zeros(512, 256, 4, 5)
    sd["netfclip.4.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(ct.ConversionError) as err:
        load_syncnet_v2(str(path))
    msg = str(err.value)
    assert str(path) in msg and "3 problem(s)" in msg
    assert "missing key netcnnlip.9.running_var" in msg
    assert "key netcnnaud.18.weight has shape (512, 256, 4, 5), expected (512, 256, 5, 4)" in msg
    assert "unexpected key netfclip.4.weight" in msg
    torch.save({"model": sd}, path)
    with pytest.raises(ct.ConversionError, match="not a syncnet_python state_dict"):
        load_syncnet_v2(str(path))
    with pytest.raises(ValueError, match="syncnet_v2.model"):
        load_syncnet_v2("")
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor\nq\x00.")  # a torch < 0.4 pickle's global
    with pytest.raises(torch_io.UnsafeCheckpointError, match="re-save it once"):
        load_syncnet_v2(str(path))
