"""launch.export: StableHLO that equals the Python functions and runs without edtalk_jax,
inference params (orbax + safetensors) equal to the loaded ones, official-layout .pt files
equal to the files they came from."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from edtalk_jax import export, infer, inference, model_io, torch_io
from edtalk_jax.models.generator import Generator


@pytest.fixture(scope="module")
def models(parity_dir):
    return infer.load_models(str(parity_dir / "edtalk_gen_s64_w8_seed0.pt"), str(parity_dir / "audio2lip_seed0.pt"))


def _inputs(b):
    rng = np.random.default_rng(b)
    return {"src": rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32),
            "frames": rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32),
            "mel": rng.normal(size=(b, 80, 16)).astype(np.float32)}


def test_stablehlo_equals_python_and_runs_without_edtalk_jax(models, tmp_path):
    out = tmp_path / "shlo"
    written = export.export("stablehlo", models, str(out), platforms=("cpu", "cuda"))
    assert set(written) == {"encode_source", "coefficients", "render", "audio2lip"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["functions"]["render"]["outputs"] == [{"name": "image", "shape": ["b", 64, 64, 3],
                                                          "dtype": "float32"}]
    assert manifest["functions"]["audio2lip"]["inputs"]["mel"][0]["shape"] == ["b", 80, 16]
    assert manifest["functions"]["render"]["platforms"] == ["cpu", "cuda"]
    for b in (1, 3):
        np.savez(tmp_path / f"in{b}.npz", **_inputs(b))
    # A process where `import edtalk_jax` fails: the loader needs jax and numpy alone.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["edtalk_jax"] = None
        sys.path.insert(0, {str(out)!r})
        import numpy as np
        from edtalk_exported import ExportedModel
        m = ExportedModel({str(out)!r})
        for b in (1, 3):
            x = np.load({str(tmp_path)!r} + f"/in{{b}}.npz")
            source = m.encode_source(x["src"])
            alphas = m.coefficients(x["frames"])
            lips = m.audio2lip(x["mel"])
            image = m.render(source, dict(alphas, lip=lips))["image"]
            np.savez({str(tmp_path)!r} + f"/out{{b}}.npz", latent=source["latent"], lips=lips, image=image,
                     **{{"alpha_" + k: v for k, v in alphas.items()}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))

    gen, v = models.gen, models.gen_variables
    encode = jax.jit(lambda v, x: inference.encode_source(gen, v, x))
    coeffs = jax.jit(lambda v, x: gen.apply(v, encode(v, x)["latent"], method=Generator.coefficients))
    a2l = jax.jit(models.audio2lip.apply)
    render = jax.jit(lambda v, s, a: inference.drive(gen, v, s, **{f"{p}_alpha": a[p] for p in a})["image"])
    for b in (1, 3):
        x, got = _inputs(b), np.load(tmp_path / f"out{b}.npz")
        source = encode(v, x["src"])
        alphas = coeffs(v, x["frames"])
        lips = a2l(models.audio2lip_variables, x["mel"])
        np.testing.assert_allclose(got["latent"], source["latent"], atol=1e-5)
        for p in gen.parts:
            np.testing.assert_allclose(got["alpha_" + p], alphas[p], atol=1e-5)
        np.testing.assert_allclose(got["lips"], lips, atol=1e-5)
        image = render(v, source, dict(alphas, lip=lips))
        np.testing.assert_allclose(got["image"], image, atol=2e-3)  # decoder rounding (parity README)


def test_params_are_the_loaded_variables(models, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "params"
    export.export("params", models, str(out))
    kind, cfg, variables = model_io.load_model(str(out / "generator"))
    assert kind == "generator" and cfg["size"] == 64
    jax.tree.map(np.testing.assert_array_equal, variables, models.gen_variables)
    tensors = load_file(str(out / "generator.safetensors"))
    keys, leaves, _ = export.flatten({k: x for k, x in models.gen_variables.items() if k != "unused"})
    assert sorted(tensors) == sorted(keys)
    for k, a in zip(keys, leaves):
        np.testing.assert_array_equal(tensors[k], a)
    assert model_io.load_model(str(out / "audio2lip"))[0] == "audio2lip"
    # How the Audio2Lip's output is read travels with it.
    assert infer.load_models(str(out / "generator"), str(out / "audio2lip")).audio2lip_target == "absolute"
    offset = tmp_path / "offset"
    export.export("params", dataclasses.replace(models, audio2lip_target="offset"), str(offset))
    assert infer.load_models(str(offset / "generator"), str(offset / "audio2lip")).audio2lip_target == "offset"


def test_pt_equals_the_official_files(models, parity_dir, tmp_path, torch):
    out = tmp_path / "pt"
    written = export.export("pt", models, str(out))
    assert written == {"generator": "EDTalk.pt", "audio2lip": "Audio2Lip.pt"}
    for name, original, key in (("EDTalk.pt", "edtalk_gen_s64_w8_seed0.pt", "gen"),
                                ("Audio2Lip.pt", "audio2lip_seed0.pt", "audio2lip")):
        mine, theirs = torch_io.load_pt(out / name)[key], torch_io.load_pt(parity_dir / original)[key]
        assert list(mine) == list(theirs)
        for k in theirs:
            np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
        assert {k: v.dtype for k, v in mine.items()} == {k: v.dtype for k, v in theirs.items()}


def test_refusals_write_nothing(models, tmp_path):
    free = dataclasses.replace(models, gen_config=dict(models.gen_config, bank_mode="free"))
    with pytest.raises(export.ExportError, match="bank_mode 'free'"):
        export.export("pt", free, str(tmp_path / "a"))
    with pytest.raises(export.ExportError, match="'offset'"):
        export.export("pt", dataclasses.replace(models, audio2lip_target="offset"), str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not an empty directory"):
        export.export("params", models, str(tmp_path / "b"))
    with pytest.raises(export.ExportError, match="does not exist"):
        export.export("params", models, str(tmp_path / "c" / "d"))
    assert sorted(os.listdir(tmp_path)) == ["b"] and os.listdir(tmp_path / "b") == ["keep.txt"]
