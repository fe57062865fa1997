"""SyncNet against a torch transcription of Wav2Lip's SyncNet_color, its loss, its loaders."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from edtalk_jax import convert_torch as ct
from edtalk_jax.models import Audio2Lip
from edtalk_jax.models.syncnet import (SyncNet, load_syncnet, load_wav2lip_audio_encoder,
                                       lower_half_crops, sync_loss)


def wav2lip_syncnet(torch):
    """Wav2Lip's models/conv.py Conv2d and models/syncnet.py SyncNet_color, transcribed."""
    nn = torch.nn

    class Conv2d(nn.Module):
        def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
            super().__init__()
            self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                            nn.BatchNorm2d(cout))
            self.act = nn.ReLU()
            self.residual = residual

        def forward(self, x):
            out = self.conv_block(x)
            if self.residual:
                out += x
            return self.act(out)

    class SyncNetColor(nn.Module):
        def __init__(self):
            super().__init__()
            self.face_encoder = nn.Sequential(
                Conv2d(15, 32, kernel_size=(7, 7), stride=1, padding=3),
                Conv2d(32, 64, kernel_size=5, stride=(1, 2), padding=1),
                Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(64, 128, kernel_size=3, stride=2, padding=1),
                Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(128, 256, kernel_size=3, stride=2, padding=1),
                Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(256, 512, kernel_size=3, stride=2, padding=1),
                Conv2d(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(512, 512, kernel_size=3, stride=2, padding=1),
                Conv2d(512, 512, kernel_size=3, stride=1, padding=0),
                Conv2d(512, 512, kernel_size=1, stride=1, padding=0))
            self.audio_encoder = nn.Sequential(
                Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
                Conv2d(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(32, 64, kernel_size=3, stride=(3, 1), padding=1),
                Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(64, 128, kernel_size=3, stride=3, padding=1),
                Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(128, 256, kernel_size=3, stride=(3, 2), padding=1),
                Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
                Conv2d(256, 512, kernel_size=3, stride=1, padding=0),
                Conv2d(512, 512, kernel_size=1, stride=1, padding=0))

        def forward(self, audio_sequences, face_sequences):
            face = self.face_encoder(face_sequences).view(face_sequences.size(0), -1)
            audio = self.audio_encoder(audio_sequences).view(audio_sequences.size(0), -1)
            return nn.functional.normalize(audio, p=2, dim=1), nn.functional.normalize(face, p=2, dim=1)

    return SyncNetColor()


def _inputs(seed, batch):
    rng = np.random.default_rng(seed)
    faces = rng.uniform(0, 1, (batch, 48, 96, 15)).astype(np.float32)
    mel = rng.uniform(-4, 4, (batch, 80, 16)).astype(np.float32)
    return faces, mel


@pytest.fixture(scope="module")
def reference(torch, tmp_path_factory):
    """A random-weight SyncNet_color with calibrated BatchNorm statistics (so activations
    stay O(1) through 17 blocks), saved the way Wav2Lip's save_checkpoint does (trained
    under DataParallel: `module.` prefixes)."""
    torch.manual_seed(0)
    model = wav2lip_syncnet(torch)
    faces, mel = _inputs(0, 8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running stats := this batch's statistics
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.from_numpy(mel)[:, None], torch.from_numpy(faces).permute(0, 3, 1, 2))
    model.eval()
    path = tmp_path_factory.mktemp("wav2lip") / "lipsync_expert.pth"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "global_step": 3, "global_epoch": 1}, path)
    return model, str(path)


def _torch_embeddings(torch, model, faces, mel):
    with torch.no_grad():
        a, v = model(torch.from_numpy(mel)[:, None], torch.from_numpy(faces).permute(0, 3, 1, 2))
    return a.numpy(), v.numpy()


def test_syncnet_matches_wav2lip(torch, reference):
    model, path = reference
    variables = load_syncnet(path)
    assert set(variables) == {"params", "batch_stats", "unused"}
    faces, mel = _inputs(1, 2)
    audio_emb, face_emb = jax.jit(SyncNet().apply)(variables, faces, mel)
    want_a, want_v = _torch_embeddings(torch, model, faces, mel)
    assert audio_emb.shape == face_emb.shape == (2, 512) and audio_emb.dtype == jnp.float32
    np.testing.assert_allclose(audio_emb, want_a, atol=1e-5)
    np.testing.assert_allclose(face_emb, want_v, atol=1e-5)
    # sync_loss: BCE(cos, 1) per example, numpy
    a, v = np.float64(want_a), np.float64(want_v)
    cos = (a * v).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(v, axis=1))
    np.testing.assert_allclose(sync_loss(audio_emb, face_emb), -np.log(cos), rtol=1e-4)
    with pytest.raises(ValueError, match=r"faces \(B, 48, 96, 15\)"):
        SyncNet().apply(variables, faces[..., :12], mel)


def test_sync_loss_edges():
    a = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0], [1.0, 1e-9]])
    v = jnp.asarray([[0.0, 1.0], [-1.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(sync_loss(a, v), [100.0, 100.0, 0.0, 0.0], atol=1e-6)
    grads = jax.grad(lambda v: sync_loss(a, v).sum())(v)
    assert np.isfinite(grads).all()
    # cos = 0.6 for unnormalised inputs too
    np.testing.assert_allclose(sync_loss(jnp.asarray([[2.0, 0.0]]), jnp.asarray([[3.0, 4.0]])), [-np.log(0.6)],
                               rtol=1e-6)


def test_load_syncnet_reports_every_problem(torch, reference, tmp_path):
    model, _ = reference
    sd = dict(model.state_dict())
    del sd["face_encoder.3.conv_block.1.running_var"]
    sd["audio_encoder.0.conv_block.0.weight"] = torch.zeros(32, 1, 5, 5)
    sd["face_encoder.17.conv_block.0.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ct.ConversionError) as err:
        load_syncnet(str(path))
    msg = str(err.value)
    assert str(path) in msg and "3 problem(s)" in msg
    assert "missing key face_encoder.3.conv_block.1.running_var" in msg
    assert "key audio_encoder.0.conv_block.0.weight has shape (32, 1, 5, 5), expected (32, 1, 3, 3)" in msg
    assert "unexpected key face_encoder.17.conv_block.0.weight" in msg
    torch.save({"epoch": 1}, path)
    with pytest.raises(ct.ConversionError, match="not a Wav2Lip checkpoint"):
        load_syncnet(str(path))
    with pytest.raises(ValueError, match="syncnet.path"):
        load_syncnet("")


def test_wav2lip_audio_encoder_starts_audio2lip(torch, reference, tmp_path):
    """From a wav2lip.pth (other modules present and ignored) into Audio2Lip's audio encoder."""
    model, _ = reference
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if k.startswith("audio_encoder.")}
    sd["module.face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(16, 6, 7, 7)
    sd["module.output_block.1.weight"] = torch.zeros(3, 32, 1, 1)
    path = tmp_path / "wav2lip.pth"
    torch.save({"state_dict": sd, "global_step": 0}, path)
    encoder = load_wav2lip_audio_encoder(str(path))

    net = Audio2Lip()
    mel = _inputs(2, 3)[1]
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(1), mel)
    for col, subtree in encoder.items():
        assert jax.tree.structure(subtree) == jax.tree.structure(
            {k: v for k, v in shapes[col].items() if k.startswith("audio_encoder_")})
    rng = np.random.default_rng(4)
    mapping = {"weight": rng.normal(0, 0.05, (512, 20)).astype(np.float32),
               "bias": rng.normal(0, 0.05, (20,)).astype(np.float32)}
    variables = {"params": {**encoder["params"], "mapping": mapping}, "batch_stats": encoder["batch_stats"]}
    got = jax.jit(net.apply)(variables, mel)
    with torch.no_grad():
        enc = model.audio_encoder(torch.from_numpy(mel)[:, None]).reshape(3, -1).numpy()
    want = enc.astype(np.float64) @ mapping["weight"] + mapping["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lower_half_crops_layout():
    b, t, h = 2, 5, 64
    rng = np.random.default_rng(3)
    values = rng.uniform(-1, 1, (b, t, 3)).astype(np.float32)
    frames = np.broadcast_to(values[:, :, None, None, :], (b, t, h, h, 3)).copy()
    frames[:, :, : 3 * h // 8] = -1.0  # upper part differs; the kept lower half must not see it
    out = np.asarray(lower_half_crops(jnp.asarray(frames)))
    assert out.shape == (b, 48, 96, 15)
    bgr = (values[:, :, ::-1].reshape(b, 1, 1, 3 * t) + 1) / 2  # frame-major, BGR inside a frame
    np.testing.assert_allclose(out, np.broadcast_to(bgr, out.shape), atol=1e-6)
    rgb = np.asarray(lower_half_crops(jnp.asarray(frames), bgr=False))
    np.testing.assert_allclose(rgb[0, 0, 0], (values[0].reshape(-1) + 1) / 2, atol=1e-6)
    assert lower_half_crops(jnp.zeros((1, 5, 256, 200, 3)), size=64).shape == (1, 32, 64, 15)
