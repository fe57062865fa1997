"""Tests for edtalk_jax.torch_io: torch-free, code-free reading of .pt files, and writing them.

Reader tests build their odd and hostile files by hand (zipfile + pickle opcodes) and never
skip; only the tests that need torch to write a file (or to compare with torch.load) skip
without it.
"""

import argparse
import builtins
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from edtalk_jax import torch_io
from edtalk_jax.torch_io import CheckpointError, UnsafeCheckpointError


def _frag(x):
    """Pickle opcodes that push the plain value x (protocol 2, no PROTO/STOP)."""
    return pickle.dumps(x, protocol=2)[2:-1]


def _storage_pid(numel, storage="FloatStorage", key="0"):
    """Opcodes of torch's persistent id ('storage', torch.<storage>, key, 'cpu', numel)."""
    return (b"(" + _frag("storage") + f"ctorch\n{storage}\n".encode() + _frag(key) + _frag("cpu")
            + _frag(numel) + b"tQ")


def _tensor(numel, size, stride, offset=0, storage="FloatStorage", key="0"):
    """Opcodes that push a tensor as torch writes it: _rebuild_tensor_v2 over a persistent id."""
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + _storage_pid(numel, storage, key)
            + _frag(offset) + _frag(tuple(size)) + _frag(tuple(stride)) + _frag(False)
            + b"ccollections\nOrderedDict\n)Rt" + b"R")


def _data_pkl(**values):
    """A data.pkl holding a dict; each value is given as opcodes."""
    return b"\x80\x02}" + b"".join(_frag(k) + v + b"s" for k, v in values.items()) + b"."


def _write_zip(path, records, byteorder=b"little"):
    """A torch.save-style archive: records maps names under archive/ to bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in {"byteorder": byteorder, "version": b"3\n", **records}.items():
            zf.writestr(f"archive/{name}", data)
    return path


def _assert_identical(got, want):
    """Same nested structure and key order, arrays equal bit for bit with the same dtype.

    `got` is torch_io's output: its arrays must also be contiguous, writeable and own their data.
    """
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_identical(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_identical(g, w)
    elif isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        assert got.tobytes() == want.tobytes()
        assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata
    else:
        assert got == want


def _numpy(t):
    """A torch tensor as numpy with the same dtype (bfloat16/float8 via their bits)."""
    import torch
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    special = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
               torch.float8_e5m2: ml_dtypes.float8_e5m2}
    if t.dtype in special:
        return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int8).numpy().view(
            special[t.dtype])
    return t.numpy()


def _torch_tree(obj):
    import torch
    if isinstance(obj, torch.Tensor):
        return _numpy(obj)
    if isinstance(obj, dict):
        return {k: _torch_tree(v) for k, v in obj.items()}
    return obj


# --- the parity fixtures: real torch.save files in the official layout -------------------------

_LOAD_WITHOUT_TORCH = """
import sys
import numpy as np
sys.modules["torch"] = None  # `import torch` now fails: reading must not need it
from edtalk_jax import torch_io
out, paths = sys.argv[1], sys.argv[2:]
arrays = {f"{i}/{name}/{key}": value for i, p in enumerate(paths)
          for name, sd in torch_io.load_pt(p).items() for key, value in sd.items()}
loaded = [m for m, mod in sys.modules.items() if m.split(".")[0] == "torch" and mod is not None]
assert not loaded, loaded
np.savez(out, **arrays)
"""


def test_fixtures_load_without_torch(parity_dir, tmp_path):
    paths = sorted(str(p) for p in parity_dir.glob("*.pt"))
    assert len(paths) == 5
    out = tmp_path / "loaded.npz"
    subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_TORCH, str(out), *paths], check=True)
    ours = {f"{i}/{name}/{key}": value for i, p in enumerate(paths)
            for name, sd in torch_io.load_pt(p).items() for key, value in sd.items()}
    with np.load(out) as without_torch:
        assert sorted(without_torch.files) == sorted(ours)
        for k in ours:
            _assert_identical(ours[k], without_torch[k])


def test_fixture_values(parity_dir):
    """Checks against values known without torch: blur kernels and the QR bases in the .npz."""
    k1 = np.array([1, 3, 3, 1], np.float32)
    blur = np.outer(k1, k1) / 64
    gen = torch_io.load_state_dict(parity_dir / "edtalk_gen_s256_w16_seed0.pt", "gen")
    kernels = [k for k in gen if k.endswith(".kernel")]
    assert len(kernels) == 30
    for k in kernels:
        assert gen[k].dtype == np.float32 and gen[k].shape == (4, 4)
        np.testing.assert_array_equal(gen[k], blur * (4 if k.startswith("dec.") else 1), err_msg=k)
    ref = np.load(parity_dir / "edtalk_gen_s256_w16_seed0.npz")
    for weight, q in ((gen["direction_lipnonlip.weight"], ref["q_lipnonlip_f64"]),
                      (np.concatenate([gen["direction_lipnonlip.weight"], gen["direction_exp.weight"]],
                                      1), ref["q_exp_f64"])):
        np.testing.assert_allclose(np.linalg.qr(weight.astype(np.float64) + 1e-8)[0], q, atol=1e-10)
    a2l = torch_io.load_state_dict(parity_dir / "audio2lip_seed0.pt", "audio2lip")
    counts = [v for k, v in a2l.items() if k.endswith("num_batches_tracked")]
    assert len(a2l) == 93 and len(counts) == 13
    assert all(c.dtype == np.int64 and c.shape == () for c in counts)


def test_fixtures_equal_torch_load(parity_dir):
    torch = pytest.importorskip("torch")
    for path in sorted(parity_dir.glob("*.pt")):
        want = _torch_tree(torch.load(path, weights_only=True))
        _assert_identical(torch_io.load_pt(path), want)


def test_load_state_dict_names_available_keys(parity_dir):
    path = parity_dir / "dis_s64_w8_seed0.pt"
    assert len(torch_io.load_state_dict(path, "dis")) == 36  # s64: fewer blocks than 256
    with pytest.raises(CheckpointError, match=r"w8_seed0\.pt: no 'gen' entry; top-level keys: 'dis'$"):
        torch_io.load_state_dict(path, "gen")


# --- hostile files: refused before anything runs -----------------------------------------------

class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(tmp_path):
    pwned = tmp_path / "pwned"
    return pwned, [(_Payload(os.system, (f"touch {pwned}",)), "system"),
                   (_Payload(builtins.open, (str(pwned), "w")), "open")]


def test_malicious_pickles_are_refused_without_running(tmp_path):
    pwned, payloads = _payloads(tmp_path)
    legacy_header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
    for payload, name in payloads:
        evil = pickle.dumps({"gen": {"w": 1.0}, "x": [payload]}, protocol=2)
        raw, legacy = tmp_path / f"{name}_raw.pt", tmp_path / f"{name}_legacy.pt"
        raw.write_bytes(evil)
        legacy.write_bytes(legacy_header + evil)
        for path in (raw, legacy, _write_zip(tmp_path / f"{name}_zip.pt", {"data.pkl": evil})):
            with pytest.raises(UnsafeCheckpointError, match=name) as err:
                torch_io.load_pt(path)
            assert str(path) in str(err.value)
            assert not pwned.exists()
    pickle.loads(evil)  # control: the last payload is live (it creates the file when unpickled)
    assert pwned.exists()


@pytest.mark.parametrize("data, what", [
    (b"\x80\x02}}" + _frag("a") + _frag(1) + b"sb.", "set state on a dict"),  # BUILD item injection
    (b"\x80\x02ctorch\nFloatStorage\n)R.", "refusing to call"),  # REDUCE on a non-function
    (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "refusing to create"),  # NEWOBJ of a non-Namespace
    (b"\x80\x02(cargparse\nNamespace\no.", "INST/OBJ"),
    (b"\x80\x02c_codecs\nencode\n" + _frag(("x", "rot13")) + b"R.", "encoding 'rot13'"),
], ids=["build", "reduce", "newobj", "obj", "encode"])
def test_allowed_globals_cannot_be_abused(tmp_path, data, what):
    path = _write_zip(tmp_path / "abuse.pt", {"data.pkl": data})
    with pytest.raises(UnsafeCheckpointError, match=what):
        torch_io.load_pt(path)


# --- broken files: a clear CheckpointError naming the file, never a wrong array -----------------

def test_hand_made_checkpoint_and_byteorder(tmp_path):
    values = np.arange(6, dtype=np.float32)
    shared = _data_pkl(t=_tensor(6, (3, 2), (1, 3)), tail=_tensor(6, (2,), (1,), offset=4))
    path = _write_zip(tmp_path / "ok.pt", {"data.pkl": shared, "data/0": values.tobytes()})
    _assert_identical(torch_io.load_pt(path), {"t": values.reshape(2, 3).T.copy(), "tail": values[4:]})
    for storage, dtype in (("FloatStorage", np.float32), ("BFloat16Storage", ml_dtypes.bfloat16),
                           ("ComplexFloatStorage", np.complex64), ("LongStorage", np.int64)):
        values = (np.arange(4) * (1.5 - 0.5j if dtype == np.complex64 else 1)).astype(dtype)
        unit = np.float32 if dtype == np.complex64 else f"u{values.itemsize}"  # complex: swap each part
        big = values.view(unit).byteswap().tobytes()
        path = _write_zip(tmp_path / "big.pt", _one(_tensor(4, (4,), (1,), storage=storage), big),
                          byteorder=b"big")
        _assert_identical(torch_io.load_pt(path)["w"], values)


def _one(tensor, *data):
    """Archive records of {'w': tensor}, with data/0 when given."""
    return {"data.pkl": _data_pkl(w=tensor), **({"data/0": data[0]} if data else {})}


@pytest.mark.parametrize("records, what", [
    (_one(_tensor(4, (3, 2), (2, 1)), bytes(16)), r"key \['w'\]: .*needs 6 elements.*holds 4"),
    (_one(_tensor(4, (2, 2), (2, 1), offset=1), bytes(16)), r"key \['w'\]: .*needs 5 elements"),
    (_one(_tensor(4, (1,), (1,), offset=4), bytes(16)), r"key \['w'\]: .*needs 5 elements"),
    (_one(_tensor(4, (4,), (1,)), bytes(12)), r"key \['w'\]: .*holds 12 bytes, 16 declared"),
    (_one(_tensor(4, (4,), (1,))), r"key \['w'\]: missing storage record archive/data/0"),
    (_one(_tensor(4, (4,), (-1,)), bytes(16)), r"key \['w'\]: malformed tensor record"),
    (_one(_tensor(4, (-4,), (1,)), bytes(16)), r"key \['w'\]: malformed tensor record"),
    (_one(_tensor(4, (4,), (1,), storage="QInt8Storage")),
     r"key \['w'\]: unsupported dtype torch.QInt8Storage"),
    (_one(_storage_pid(4), bytes(16)), r"key \['w'\]: unsupported value"),  # a bare storage
    (_one(b"ctorch._utils\n_rebuild_tensor_v2\n"), "unsupported value"),  # no stand-in leaks out
    ({"weights.bin": b"x"}, "without <archive>/data.pkl"),
    ({"data.pkl": b"\x80\x02}"}, "truncated"),
])
def test_broken_zip_checkpoints(tmp_path, records, what):
    path = _write_zip(tmp_path / "broken.pt", records)
    with pytest.raises(CheckpointError, match=what) as err:
        torch_io.load_pt(path)
    assert str(path) in str(err.value)


def test_not_checkpoints(tmp_path, parity_dir, samples_dir):
    fixture = (parity_dir / "dis_s64_w8_seed0.pt").read_bytes()
    cases = {
        "missing.pt": (None, "no such file"),
        "folder.pt": ("dir", "a directory"),
        "empty.pt": (b"", "empty file"),
        "half.pt": (fixture[: len(fixture) // 2], "truncated or corrupt zip"),
        "face.jpg": ((samples_dir / "identity_source.jpg").read_bytes(), "not a torch checkpoint"),
        "notes.txt": (b"hello, these are not weights\n", "not a torch checkpoint"),
        "plain.pkl": (pickle.dumps({"w": [1.0]}, protocol=2), "no torch magic number"),
    }
    for name, (data, what) in cases.items():
        path = tmp_path / name
        if data == "dir":
            path.mkdir()
        elif data is not None:
            path.write_bytes(data)
        with pytest.raises(CheckpointError, match=what) as err:
            torch_io.load_pt(path)
        assert str(path) in str(err.value)


# --- the reader's safety rules (module docstring): bounds, memory, structure, dtypes, values -----

def _tensor_v3(nbytes, size, stride, dtype="float32", key="0"):
    """Opcodes of a torch >= 2 tensor: _rebuild_tensor_v3 over an UntypedStorage of nbytes."""
    pid = (b"(" + _frag("storage") + b"ctorch.storage\nUntypedStorage\n" + _frag(key) + _frag("cpu")
           + _frag(nbytes) + b"tQ")
    return (b"ctorch._utils\n_rebuild_tensor_v3\n(" + pid + _frag(0) + _frag(tuple(size))
            + _frag(tuple(stride)) + _frag(False) + b"ccollections\nOrderedDict\n)R"
            + f"ctorch\n{dtype}\n".encode() + b"tR")


def _pkl(*items):
    """A data.pkl holding a dict; items are (key, value) as opcodes; a value that is a dict of
    opcodes nests one level (as {'gen': state_dict})."""
    def ops(pairs):
        return b"}" + b"".join(k + (ops(v.items()) if isinstance(v, dict) else v) + b"s"
                               for k, v in pairs)
    return b"\x80\x02" + ops(items) + b"."


def _raises(path, what, load=torch_io.load_pt):
    """The error names the file and matches `what` (which names the key)."""
    with pytest.raises(CheckpointError, match=what) as err:
        load(path)
    assert str(path) in str(err.value)
    return err.value


def test_stride0_view_asking_for_gibs_is_refused_without_allocating(tmp_path):
    import time
    import tracemalloc
    # One float of storage, viewed as (2**31, 4) with stride 0: 32 GiB if materialised.
    path = _write_zip(tmp_path / "bomb.pt", _one(_tensor(1, (2**31, 4), (0, 0)), bytes(4)))
    assert path.stat().st_size < 1024
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _raises(path, r"key \['w'\]: a float32 tensor of shape \(2147483648, 4\) \(stride \(0, 0\)\) "
                      r"over a 4-byte storage would allocate 32\.0 GiB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5 and peak < 1 << 20
    # An overlapping (sliding-window) view: 36 KiB of storage -> 32 MiB of copies.
    n = 8192 + 1023
    path = _write_zip(tmp_path / "windows.pt", _one(_tensor(n, (8192, 1024), (1, 1)), bytes(4 * n)))
    _raises(path, r"key \['w'\]: .*would allocate 32\.0 MiB; a \d+-byte file may allocate at most")
    # Small expanded views, as torch saves `ones(4).expand(3, 4)`, are fine.
    row = np.arange(4, dtype=np.float32)
    path = _write_zip(tmp_path / "expand.pt", _one(_tensor(4, (3, 4), (0, 1)), row.tobytes()))
    _assert_identical(torch_io.load_pt(path)["w"], np.tile(row, (3, 1)))


def test_compressed_storage_cannot_inflate_past_the_budget(tmp_path):
    path = tmp_path / "deflated.pt"
    numel = 5 << 20  # 20 MiB of zeros, a few KiB deflated
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _data_pkl(w=_tensor(numel, (numel,), (1,))))
        zf.writestr("archive/data/0", bytes(4 * numel), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    _raises(path, r"key \['w'\]: storage '0' \(5242880 x torch.FloatStorage\) would allocate 20\.0 MiB")


def test_structure_is_checked_naming_the_key(tmp_path):
    t, data, g = _tensor(2, (2,), (1,)), {"data/0": bytes(8)}, _frag("gen")
    cases = {  # load_pt: tensors never become dict keys or set elements
        "tensor_key": (_pkl((g, {t: _frag(1)})), r"key \['gen'\]: a tensor used as a dict key"),
        "tuple_key": (_pkl((b"(" + _frag(1) + t + b"t", _frag(1))),
                      r"the top-level object: a tensor used as a dict key"),
        "set": (_pkl((_frag("s"), b"c__builtin__\nset\n](" + t + b"e\x85R")),
                r"key \['s'\]: a tensor inside a set"),
    }
    for name, (pkl, what) in cases.items():
        _raises(_write_zip(tmp_path / f"{name}.pt", {"data.pkl": pkl, **data}), what)
    cases = {  # load_state_dict: a flat str -> tensor mapping
        "int_key": (_pkl((g, {_frag("w"): t, _frag(3): t})),
                    r"key \['gen'\]\[3\]: a state_dict key must be a str, not int"),
        "list": (_pkl((g, {_frag("w"): _frag([1.0, 2.0])})),
                 r"key \['gen'\]\['w'\]: type list, not a tensor"),
        "nested": (_pkl((g, {_frag("block"): {_frag("w"): t}})),
                   r"key \['gen'\]\['block'\]: type dict, not a tensor"),
        "number": (_pkl((g, {_frag("step"): _frag(7)})),
                   r"key \['gen'\]\['step'\]: type int, not a tensor"),
        "tensor": (_pkl((g, t)), r"key \['gen'\]: type ndarray, not a state_dict"),
    }
    for name, (pkl, what) in cases.items():
        path = _write_zip(tmp_path / f"{name}.pt", {"data.pkl": pkl, **data})
        _raises(path, what, lambda p: torch_io.load_state_dict(p, "gen"))
    torch_io.load_pt(path)  # plain load_pt accepts any such structure


def test_dtypes_are_kept_and_checked(tmp_path):
    counts = np.array(2**62 + 1, np.int64)  # exact only as an integer
    pkl = _pkl((_frag("gen"), {
        _frag("bn.num_batches_tracked"): _tensor(1, (), (), storage="LongStorage"),
        _frag("bn.weight"): _tensor(3, (3,), (1,), storage="HalfStorage", key="1")}))
    path = _write_zip(tmp_path / "bn.pt", {"data.pkl": pkl, "data/0": counts.tobytes(),
                                           "data/1": np.ones(3, np.float16).tobytes()})
    sd = torch_io.load_state_dict(path, "gen")  # no dtype is cast: int64 stays int64, exactly
    _assert_identical(sd, {"bn.num_batches_tracked": counts, "bn.weight": np.ones(3, np.float16)})
    # A torch dtype with no numpy equivalent: refused naming key and dtype.
    path = _write_zip(tmp_path / "c32.pt",
                      _one(_tensor_v3(16, (4,), (1,), dtype="complex32"), bytes(16)))
    _raises(path, r"key \['w'\]: unsupported dtype torch.complex32")
    # Read by load_pt, but not a weights dtype in a state dict.
    path = _write_zip(tmp_path / "c64.pt", {"data.pkl": _pkl((_frag("gen"), {_frag("z"): _tensor(
        2, (2,), (1,), storage="ComplexFloatStorage")})), "data/0": np.ones(2, np.complex64).tobytes()})
    assert torch_io.load_pt(path)["gen"]["z"].dtype == np.complex64
    _raises(path, r"key \['gen'\]\['z'\]: dtype complex64 is not a weights dtype",
            lambda p: torch_io.load_state_dict(p, "gen"))


@pytest.mark.parametrize("dtype, storage", [(np.float32, "FloatStorage"),
                                            (ml_dtypes.bfloat16, "BFloat16Storage")])
def test_nonfinite_values_are_refused_naming_the_key(tmp_path, dtype, storage):
    values = np.array([1.0, np.nan, -np.inf, 2.0], np.float32).astype(dtype)
    pkl = _pkl((_frag("gen"), {
        _frag("ok"): _tensor(2, (2,), (1,), storage=storage),
        _frag("conv.weight"): _tensor(4, (2, 2), (2, 1), storage=storage, key="1")}))
    path = _write_zip(tmp_path / "nan.pt", {"data.pkl": pkl, "data/0": values[[0, 3]].tobytes(),
                                            "data/1": values.tobytes()})
    name = np.dtype(dtype).name
    what = rf"key \['gen'\]\['conv.weight'\]: a {name} tensor of shape \(2, 2\) holds 2 NaN/Inf value"
    _raises(path, what)
    _raises(path, what, lambda p: torch_io.load_state_dict(p, "gen"))
    got = torch_io.load_pt(path, allow_nonfinite=True)["gen"]["conv.weight"]
    assert got.tobytes() == values.tobytes()


def test_save_pt_without_torch_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'edtalk-jax\[torch\]'"):
        torch_io.save_pt({"w": np.zeros(2, np.float32)}, tmp_path / "x.pt")


# --- files written by torch ---------------------------------------------------------------------

def test_round_trip_is_exact(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    floats = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn)
    ints = (np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16)
    gen = {f"w_{np.dtype(dt).name}": (rng.normal(size=(3, 5)) * 100).astype(dt) for dt in floats}
    gen.update({f"i_{np.dtype(dt).name}": rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, (2, 3), dt)
                for dt in ints})
    obj = {"gen": gen}
    obj["gen"]["bn.num_batches_tracked"] = np.array(7, np.int64)
    obj["gen"]["mask"] = rng.normal(size=(2, 2)) > 0
    obj["gen"]["z"] = (rng.normal(size=4) + 1j * rng.normal(size=4)).astype(np.complex64)
    obj["gen"]["empty"] = np.zeros((0, 3), np.float32)
    obj["gen"]["nan"] = np.array([np.nan, -0.0, np.inf], np.float32)
    obj["args"] = {"size": 256, "lr": 0.002, "name": "x", "flags": [True, None], "pair": (1, 2.5)}
    path = torch_io.save_pt(obj, tmp_path / "round.pt")
    _assert_identical(torch_io.load_pt(path, allow_nonfinite=True), obj)
    _assert_identical(torch_io.load_pt(path, allow_nonfinite=True),
                      _torch_tree(torch.load(path, weights_only=True)))
    with pytest.raises(CheckpointError, match=r"key \['gen'\]\['nan'\]: .* 2 NaN/Inf"):
        torch_io.load_pt(path)
    with pytest.raises(TypeError, match=r"obj\['bad'\]"):
        torch_io.save_pt({"bad": object()}, tmp_path / "bad.pt")


def test_namespace_args_become_plain_data(tmp_path):
    torch = pytest.importorskip("torch")
    sd = torch.nn.BatchNorm1d(3).state_dict()
    args = argparse.Namespace(size=256, lr=0.002, tags={"a"}, blob=b"\x00\xff", c=1j,
                              nested=[1, (2, None)])
    torch.save({"gen": sd, "args": args}, tmp_path / "ns.pt")
    ckpt = torch_io.load_pt(tmp_path / "ns.pt")
    assert ckpt["args"] == vars(args) and type(ckpt["args"]) is dict
    assert list(ckpt["gen"]) == list(sd) and type(ckpt["gen"]) is dict  # `_metadata` dropped
    _assert_identical(ckpt["gen"], _torch_tree(dict(sd)))


@pytest.mark.parametrize("zip_format", [True, False])
def test_views_and_shared_storage_written_by_torch(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    c = torch.tensor([1 + 2j, 3 - 1j])
    views = {"x": x, "t": x.transpose(0, 2), "slice": x[:, 1:, ::2], "elem": x[1, 2, 3],
             "expand": torch.ones(3).expand(4, 3), "conj": c.conj(), "neg": c.clone().conj().imag,
             "param": torch.nn.Parameter(torch.ones(2, 2)), "bf": x.to(torch.bfloat16)[1, :, 1:]}
    assert views["conj"].is_conj() and views["neg"].is_neg()  # saved as flags on the storage
    path = tmp_path / "views.pt"
    torch.save(views, path, _use_new_zipfile_serialization=zip_format)
    _assert_identical(torch_io.load_pt(path), _torch_tree(views))
    if not zip_format:
        data = path.read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[:-10])
        with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
            torch_io.load_pt(tmp_path / "cut.pt")
