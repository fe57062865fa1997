"""Read PyTorch `.pt` checkpoints without torch and without running pickle code; write them back.

Threat model: a `.pt` file is a pickle, and unpickling may call any importable function
(`os.system`, `builtins.eval`, ...). Checkpoints come from the internet, so `load_pt` runs
no code the file asks for. A restricted unpickler resolves only the globals a weights file
needs (tensor rebuild functions, storage and dtype names, `OrderedDict`, `argparse.Namespace`,
the builtin `set`/`frozenset`/`complex` and latin-1 `bytes`), each mapped to a local stand-in.
REDUCE may call only those stand-ins, NEWOBJ may only create a Namespace, and BUILD may only
fill a Namespace or drop a state_dict's `_metadata`; anything else raises
`UnsafeCheckpointError` before it runs. Tensor bytes are read as raw data, and every
shape, stride and offset is checked against its storage.

Formats read: the `torch.save` zip archive (torch >= 1.6) and the legacy pickle stream
(torch < 1.6). `save_pt` needs torch (`pip install 'edtalk-jax[torch]'`) and writes the zip
format with plain dicts, which `torch.load(path, weights_only=True)` accepts.
"""

import _compat_pickle
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_INSTALL_TORCH = "pip install 'edtalk-jax[torch]'"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class CheckpointError(ValueError):
    """The file is not a readable torch checkpoint; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for something outside the allowlist (it could run code); nothing was run."""


# torch dtype name, legacy typed-storage class prefix (None: torch saves it with
# _rebuild_tensor_v3 over an UntypedStorage), numpy dtype.
_TYPES = (
    ("float32", "Float", np.float32), ("float64", "Double", np.float64),
    ("float16", "Half", np.float16), ("bfloat16", "BFloat16", ml_dtypes.bfloat16),
    ("int64", "Long", np.int64), ("int32", "Int", np.int32), ("int16", "Short", np.int16),
    ("int8", "Char", np.int8), ("uint8", "Byte", np.uint8), ("bool", "Bool", np.bool_),
    ("complex64", "ComplexFloat", np.complex64), ("complex128", "ComplexDouble", np.complex128),
    ("uint16", None, np.uint16), ("uint32", None, np.uint32), ("uint64", None, np.uint64),
    ("float8_e4m3fn", None, ml_dtypes.float8_e4m3fn), ("float8_e5m2", None, ml_dtypes.float8_e5m2),
)
_TORCH_NAME = {np.dtype(dt): name for name, _, dt in _TYPES}


class _TorchType:
    """Stand-in for a torch storage class or dtype: just the numpy element type."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Storage:
    """One storage record: element type, element count and (once read) its raw bytes."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.raw = dtype, numel, None


class _Tensor:
    """A tensor to build once storages are read (legacy files store the data after the pickle)."""

    def __init__(self, storage, offset, size, stride, dtype, metadata):
        ints = lambda xs: type(xs) is tuple and all(type(x) is int and x >= 0 for x in xs)
        if not (isinstance(storage, _Storage) and ints((offset,)) and ints(size) and ints(stride)
                and len(size) == len(stride)):
            raise CheckpointError(f"malformed tensor record (offset {offset!r}, size {size!r}, "
                                  f"stride {stride!r})")
        if metadata and not (type(metadata) is dict and set(metadata) <= {"conj", "neg"}):
            raise CheckpointError(f"unsupported tensor metadata {metadata!r}")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype, self.metadata = dtype, metadata or {}


class _Namespace(dict):
    """argparse.Namespace stand-in; its attributes come back as a plain dict."""


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    dtype = storage.dtype if isinstance(storage, _Storage) else None
    return _Tensor(storage, offset, size, stride, dtype, metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, _TorchType):
        raise CheckpointError(f"malformed tensor record (dtype {dtype!r})")
    return _Tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data  # a Parameter is its tensor; Python attributes set on it are dropped


def _encode(text, encoding):  # how protocol-2 pickles spell `bytes`
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _TorchType(np.uint8),
    ("argparse", "Namespace"): _Namespace,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("_codecs", "encode"): _encode,
}
_ALLOWED.update({("torch", f"{prefix}Storage"): _TorchType(dt) for _, prefix, dt in _TYPES if prefix})
_ALLOWED.update({("torch", name): _TorchType(dt) for name, _, dt in _TYPES})
_CALLABLE = (dict, set, frozenset, complex, _encode, _rebuild_tensor_v2, _rebuild_tensor_v3,
             _rebuild_parameter)


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler with the object-creating opcodes replaced by checked ones."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, persistent_load):
        super().__init__(file)
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        key = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        key = (_compat_pickle.IMPORT_MAPPING.get(key[0], key[0]), key[1])
        if key not in _ALLOWED:
            raise UnsafeCheckpointError(
                f"refusing global '{module}.{name}': not on the allowlist for weights files "
                "(tensors, dicts, argparse.Namespace); it could run code, so nothing was loaded")
        return _ALLOWED[key]

    def persistent_load(self, pid):
        return self._persistent_load(pid)

    def _reduce(self):
        args, func = self.stack.pop(), self.stack[-1]
        if not any(func is f for f in _CALLABLE) or type(args) is not tuple:
            raise UnsafeCheckpointError(f"refusing to call {func!r}")
        self.stack[-1] = func(*args)

    def _newobj(self, kwargs=None):
        args, cls = self.stack.pop(), self.stack.pop()
        if cls is not _Namespace or args or kwargs:
            raise UnsafeCheckpointError(f"refusing to create {cls!r}")
        self.append(_Namespace())

    def _newobj_ex(self):
        self._newobj(kwargs=self.stack.pop())

    def _build(self):
        state, inst = self.stack.pop(), self.stack[-1]
        if type(inst) is _Namespace and type(state) is dict:
            inst.update(state)
        elif not (type(inst) is dict and type(state) is dict and set(state) <= {"_metadata"}):
            # (state_dict()'s per-module versions in `_metadata` are dropped.)
            raise UnsafeCheckpointError(f"refusing to set state on a {type(inst).__name__}")

    def _refuse(self):
        raise UnsafeCheckpointError("refusing protocol-0/1 object creation (INST/OBJ opcode)")

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.INST[0]] = dispatch[pickle.OBJ[0]] = _refuse


def _storage_record(storages, pid):
    """Check a persistent id ('storage', type, key, location, numel[, view]); get its storage."""
    if not (type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _TorchType) and type(pid[2]) is str
            and type(pid[4]) is int and pid[4] >= 0):
        raise CheckpointError(f"unsupported persistent id {pid!r}")
    if len(pid) == 6 and pid[5] is not None:
        raise CheckpointError("storage views (torch < 0.4 files) are not supported")
    dtype, key, numel = pid[1].dtype, pid[2], pid[4]
    storage = storages.setdefault(key, _Storage(dtype, numel))
    if (storage.dtype, storage.numel) != (dtype, numel):
        raise CheckpointError(f"storage {key!r} is declared twice with different types or sizes")
    return storage


def _load_zip(f):
    with zipfile.ZipFile(f) as zf:
        names = set(zf.namelist())
        pkl = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
        if not pkl:
            raise CheckpointError("zip archive without <archive>/data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "constants.pkl" in names:
            raise CheckpointError("a TorchScript archive (torch.jit.save), not a torch.save file")
        order = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if order not in ("little", "big"):
            raise CheckpointError(f"unknown byteorder {order!r}")
        storages = {}

        def persistent_load(pid):
            storage = _storage_record(storages, pid)
            if storage.raw is None:
                name, nbytes = f"{prefix}data/{pid[2]}", storage.numel * storage.dtype.itemsize
                if name not in names:
                    raise CheckpointError(f"missing storage record {name}")
                size = zf.getinfo(name).file_size
                if size < nbytes:
                    raise CheckpointError(f"storage record {name} holds {size} bytes, {nbytes} declared")
                with zf.open(name) as record:
                    storage.raw = record.read(nbytes)
                if len(storage.raw) < nbytes:  # the zip's size field lied
                    raise CheckpointError(f"storage record {name} is truncated")
            return storage

        with zf.open(pkl[0]) as data:
            return _Unpickler(data, persistent_load).load(), order == "big"


def _no_persistent_id(pid):
    raise CheckpointError(f"unexpected persistent id {pid!r}")


def _load_legacy(f):
    plain = lambda: _Unpickler(f, _no_persistent_id).load()
    if plain() != _LEGACY_MAGIC:
        raise CheckpointError("a pickle, but not a torch checkpoint (no torch magic number)")
    if plain() != _LEGACY_PROTOCOL:
        raise CheckpointError("unsupported legacy torch protocol; re-save it with torch >= 1.6")
    plain()  # sys_info; torch writes legacy storages little-endian on every host
    storages = {}
    obj = _Unpickler(f, lambda pid: _storage_record(storages, pid)).load()
    for key in plain():
        if key not in storages:
            raise CheckpointError(f"storage {key!r} has data but no tensor uses it")
        storage = storages[key]
        header, nbytes = f.read(8), storage.numel * storage.dtype.itemsize
        if len(header) < 8 or struct.unpack("<q", header)[0] != storage.numel:
            raise CheckpointError(f"storage {key!r}: size header missing or wrong (truncated file?)")
        if os.fstat(f.fileno()).st_size - f.tell() < nbytes:
            raise CheckpointError(f"storage {key!r}: fewer than {nbytes} bytes left (truncated file)")
        storage.raw = f.read(nbytes)
    if any(s.raw is None for s in storages.values()):
        raise CheckpointError("a tensor's storage data is missing (truncated file?)")
    return obj, False


def _array(t, big_endian):
    """The tensor as a contiguous array that owns its data."""
    dtype, raw = t.dtype, t.storage.raw
    count = len(raw) // dtype.itemsize
    if big_endian and dtype.itemsize > 1:
        swapped = dtype.newbyteorder(">") if dtype.kind in "biufc" else np.dtype(f">u{dtype.itemsize}")
        flat = np.frombuffer(raw, swapped, count).astype(swapped.newbyteorder("=")).view(dtype)
    else:
        flat = np.frombuffer(raw, dtype, count)
    if 0 in t.size:
        out = np.zeros(t.size, dtype)
    else:
        end = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if end >= len(flat):
            raise CheckpointError(f"a tensor of shape {t.size} (offset {t.offset}, stride {t.stride}) "
                                  f"needs {end + 1} elements; its storage holds {len(flat)}")
        view = np.lib.stride_tricks.as_strided(
            flat[t.offset:], t.size, [s * dtype.itemsize for s in t.stride], writeable=False)
        out = np.array(view, order="C")
    if t.metadata.get("conj"):  # torch saves conjugate/negative views lazily, as a flag
        out = np.conj(out)
    if t.metadata.get("neg"):
        out = np.negative(out)
    return out


def _finish(obj, big_endian, memo):
    """Tensors -> arrays, Namespaces -> dicts, plain data kept; anything else is refused."""
    if id(obj) in memo:
        return memo[id(obj)]
    walk = lambda x: _finish(x, big_endian, memo)
    if isinstance(obj, _Tensor):
        out = _array(obj, big_endian)
    elif isinstance(obj, dict):
        out = memo[id(obj)] = {}
        out.update((walk(k), walk(v)) for k, v in obj.items())
    elif type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(walk(x) for x in obj)
    elif type(obj) in (tuple, set, frozenset):
        out = type(obj)(walk(x) for x in obj)
    elif obj is None or type(obj) in (bool, int, float, complex, str, bytes):
        out = obj
    else:  # e.g. a bare storage, or a stand-in class or function stored as a value
        raise CheckpointError(f"unsupported value in the pickle: {obj!r}")
    memo[id(obj)] = out
    return out


def load_pt(path: str | os.PathLike) -> Any:
    """Load a `torch.save` file as plain Python: dicts, lists, numbers, strings, numpy arrays.

    Raises CheckpointError (UnsafeCheckpointError for code-running pickles) naming the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if not head:
                raise CheckpointError("empty file")
            if head.startswith(b"PK"):  # (the check torch uses; tensor bytes may hold zip magic)
                if not zipfile.is_zipfile(f):
                    raise CheckpointError("truncated or corrupt zip archive")
                obj, big_endian = _load_zip(f)
            elif head[0] == pickle.PROTO[0]:
                f.seek(0)
                obj, big_endian = _load_legacy(f)
            else:
                raise CheckpointError("not a torch checkpoint (neither a torch.save zip archive "
                                      "nor a legacy torch pickle)")
        return _finish(obj, big_endian, {})
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, not a checkpoint file") from None
    except CheckpointError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # anything else a malformed file triggers in pickle/zipfile/numpy
        raise CheckpointError(f"{path}: malformed or truncated checkpoint "
                              f"({type(e).__name__}: {e})") from e


def load_state_dict(path: str | os.PathLike, key: str) -> dict:
    """`load_pt(path)[key]`, e.g. key 'gen', 'audio2lip' or 'dis' of an official checkpoint."""
    ckpt = load_pt(path)
    if not isinstance(ckpt, dict) or key not in ckpt:
        have = ", ".join(map(repr, ckpt)) if isinstance(ckpt, dict) else f"none (a {type(ckpt).__name__})"
        raise CheckpointError(f"{path}: no {key!r} entry; top-level keys: {have}")
    return ckpt[key]


def _to_torch(obj, torch, where):
    if isinstance(obj, (np.ndarray, np.generic)):
        native = np.asarray(obj).dtype.newbyteorder("=")
        if native not in _TORCH_NAME:
            raise TypeError(f"{where}: dtype {native} has no torch equivalent")
        arr = np.array(obj, dtype=native, order="C")  # own, native, C-order copy; 0-d stays 0-d
        if native.kind not in "bifc":  # unsigned and ml_dtypes: hand torch the bits (any torch 2.x)
            arr = arr.view(f"i{native.itemsize}")
        return torch.from_numpy(arr).view(getattr(torch, _TORCH_NAME[native]))
    if isinstance(obj, dict):
        return {k: _to_torch(v, torch, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_to_torch(v, torch, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return obj
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a .pt file")


def save_pt(obj: Any, path: str | os.PathLike) -> str | os.PathLike:
    """Write nested dicts/lists/tuples of numpy arrays and plain values with `torch.save`.

    Arrays become tensors of the same dtype (numpy scalars become 0-d tensors). Returns path.
    """
    try:
        import torch  # optional: reading never needs it
    except ImportError as e:
        raise ImportError(f"save_pt writes .pt files with PyTorch: {_INSTALL_TORCH}") from e
    torch.save(_to_torch(obj, torch, "obj"), os.fspath(path))
    return path
