"""Read PyTorch `.pt` checkpoints without torch and without running pickle code; write them back.

Threat model: a `.pt` file is a pickle, and unpickling may call any importable function
(`os.system`, `builtins.eval`, ...). Checkpoints come from the internet, so `load_pt` runs
no code the file asks for. A restricted unpickler resolves only the globals a weights file
needs (tensor rebuild functions, storage and dtype names, `OrderedDict`, `argparse.Namespace`,
the builtin `set`/`frozenset`/`complex` and latin-1 `bytes`), each mapped to a local stand-in.
REDUCE may call only those stand-ins, NEWOBJ may only create a Namespace, and BUILD may only
fill a Namespace or drop a state_dict's `_metadata`; anything else raises
`UnsafeCheckpointError` before it runs.

Safety rules for what the pickle describes. Rules 1-4 are checked in a walk over the unpickled
structure *before any tensor data is read or allocated*, rule 5 as each tensor is built. A
violation raises `CheckpointError` (a ValueError) naming the file and the key path of the
value, e.g. `['gen']['conv.weight']`; errors in the pickle stream or archive layout, found
before that structure exists, name the file and the offending global, persistent id or record.

1. Bounds: size, stride and storage offset are non-negative ints; a non-empty view must fit
   its storage, `offset + sum((size_i - 1) * stride_i) < storage numel`, and the storage's
   bytes must be present in the file.
2. Memory: every tensor is materialised as an owned C-order copy, so a tiny storage can back a
   huge stride-0 (expand) or overlapping view. The bytes to allocate (each storage read once,
   plus every tensor's materialised size) may total at most 4 x the file size + 16 MiB; the
   tensor that crosses the limit is refused before anything is allocated. An ordinary
   checkpoint needs about 2 x its size; the rest covers tied weights and small expanded views.
   (This also bounds deflate-compressed records, which torch never writes.)
3. Structure: values are tensors, dicts, lists, tuples, sets, Namespaces (returned as dicts) and
   plain None/bool/int/float/complex/str/bytes; a tensor may not be a dict key or a set
   element. `load_state_dict` further requires a flat `str -> tensor` mapping.
4. Dtypes: no dtype is cast; every tensor keeps its torch dtype (as numpy / ml_dtypes), so
   integer buffers such as BatchNorm's int64 `num_batches_tracked` stay integers. Dtypes with
   no numpy equivalent (qint8, complex32, float8_e4m3fnuz, ...) are refused, naming the dtype.
   In a state dict (`load_state_dict`) only float16/bfloat16/float32/float64 weights and
   integer/bool buffers are accepted.
5. Values: floating and complex tensors must be finite (official checkpoints are); NaN/Inf is
   refused unless `load_pt(..., allow_nonfinite=True)`.

Formats read: the `torch.save` zip archive (torch >= 1.6) and the legacy pickle stream
(torch < 1.6). `save_pt` needs torch (`pip install 'edtalk-jax[torch]'`) and writes the zip
format with plain dicts, which `torch.load(path, weights_only=True)` accepts.
"""

import _compat_pickle
import math
import os
import pickle
import re
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
_INEXACT = {dt for dt, name in _TORCH_NAME.items() if name.startswith(("float", "bfloat", "complex"))}
_STATE_DICT_DTYPES = {np.dtype(dt) for dt in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64,
                                              np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_)}
# Other torch storage classes and dtypes (qint8, complex32, float8_e4m3fnuz, ...): resolved to
# inert markers so that a tensor using one is refused by key and dtype (rule 4), not as a global.
_OTHER_TORCH_TYPE = re.compile(r"\w+Storage|q?u?int\d+|bits\w+|b?float\d\w*|complex\d+|c?half")
_BUDGET_FACTOR, _BUDGET_SLACK = 4, 16 << 20  # rule 2: 4 x file size + 16 MiB
_FINITE_CHUNK = 1 << 22  # elements per np.isfinite pass (bounds its temporary)
_SCALARS = (bool, int, float, complex, str, bytes)


class _TorchType:
    """Stand-in for a torch storage class or dtype: its name and numpy type (None: unsupported)."""

    def __init__(self, dtype, name):
        self.dtype, self.name = None if dtype is None else np.dtype(dtype), name


class _Storage:
    """One storage record: type, element count, archive key; `raw` bytes once read."""

    def __init__(self, torch_type, numel, key):
        self.type, self.numel, self.key = torch_type, numel, key
        self.raw = self.where = None  # where: key path of the first tensor using it

    @property
    def nbytes(self):
        return self.numel * self.type.dtype.itemsize


class _Tensor:
    """A tensor record as the pickle gave it: `_check_tensor` validates it, `_array` builds it."""

    def __init__(self, storage, offset, size, stride, torch_type, metadata):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.type, self.metadata, self.where = torch_type, metadata, None


class _Namespace(dict):
    """argparse.Namespace stand-in; its attributes come back as a plain dict."""


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return _Tensor(storage, offset, size, stride, getattr(storage, "type", None), metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    return _Tensor(storage, offset, size, stride, dtype, metadata)


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
    ("torch.storage", "UntypedStorage"): _TorchType(np.uint8, "torch.UntypedStorage"),
    ("argparse", "Namespace"): _Namespace,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("_codecs", "encode"): _encode,
}
_ALLOWED.update({("torch", f"{prefix}Storage"): _TorchType(dt, f"torch.{prefix}Storage")
                 for _, prefix, dt in _TYPES if prefix})
_ALLOWED.update({("torch", name): _TorchType(dt, f"torch.{name}") for name, _, dt in _TYPES})
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
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key[0] == "torch" and _OTHER_TORCH_TYPE.fullmatch(key[1]):
            return _TorchType(None, f"torch.{key[1]}")  # never callable (not in _CALLABLE)
        raise UnsafeCheckpointError(
            f"refusing global '{module}.{name}': not on the allowlist for weights files "
            "(tensors, dicts, argparse.Namespace); it could run code, so nothing was loaded")

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
            and type(pid[4]) is int and 0 <= pid[4] < 2**63):
        raise CheckpointError(f"unsupported persistent id {_short(pid)}")
    if len(pid) == 6 and pid[5] is not None:
        raise CheckpointError("storage views (torch < 0.4 files) are not supported")
    torch_type, key, numel = pid[1], pid[2], pid[4]
    storage = storages.setdefault(key, _Storage(torch_type, numel, key))
    if (storage.type.name, storage.numel) != (torch_type.name, numel):
        raise CheckpointError(f"storage {key!r} is declared twice with different types or sizes")
    return storage


# --- rules 1-4: one walk over the unpickled structure, before any tensor data is read ----------

def _short(x, limit=80):
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _at(path):
    """A key path, kept as nested (parent, key) pairs until an error needs it as text."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(f"[{_short(key)}]")
    return "key " + "".join(reversed(keys)) if keys else "the top-level object"


def _human(nbytes):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


class _Budget:
    """Rule 2: the bytes this file may make the reader allocate for tensor data."""

    def __init__(self, file_size):
        self.file_size = file_size
        self.limit = self.left = _BUDGET_FACTOR * file_size + _BUDGET_SLACK

    def spend(self, nbytes, at, what):
        if nbytes > self.left:
            raise CheckpointError(
                f"{at}: {what} would allocate {_human(nbytes)}; a {self.file_size}-byte file may "
                f"allocate at most {_human(self.limit)} for tensor data ({_BUDGET_FACTOR} x its "
                f"size + {_human(_BUDGET_SLACK)}) and {_human(self.left)} of that is left (a stride-0 "
                "or overlapping view expanding a small storage?)")
        self.left -= nbytes


def _holds_tensor(x):
    return isinstance(x, _Tensor) or (type(x) in (tuple, set, frozenset) and any(map(_holds_tensor, x)))


def _check(obj, budget):
    """Validate the structure and every tensor record; return the storages used, first use first."""
    seen, used = set(), []

    def walk(x, path):
        if id(x) in seen:  # shared (pickle-memoised) objects are checked and counted once
            return
        if isinstance(x, _Tensor):
            seen.add(id(x))
            x.where = path
            _check_tensor(x, budget, used)
        elif isinstance(x, dict) or type(x) in (list, tuple):
            seen.add(id(x))
            for k, v in (x.items() if isinstance(x, dict) else enumerate(x)):
                if isinstance(x, dict) and _holds_tensor(k):
                    raise CheckpointError(f"{_at(path)}: a tensor used as a dict key")
                walk(v, (path, k))
        elif type(x) in (set, frozenset):
            if _holds_tensor(x):
                raise CheckpointError(f"{_at(path)}: a tensor inside a {type(x).__name__}")
        elif not (x is None or type(x) in _SCALARS):  # e.g. a bare storage, a stand-in or marker
            raise CheckpointError(f"{_at(path)}: unsupported value in the pickle: {_short(x)}")

    walk(obj, None)
    return used


def _check_tensor(t, budget, used):
    """Rules 1, 2 and 4 for one tensor record; marks its storage to be read."""
    at, s, size, stride, offset = _at(t.where), t.storage, t.size, t.stride, t.offset
    ints = lambda xs: type(xs) is tuple and all(type(x) is int and 0 <= x < 2**63 for x in xs)
    if not (isinstance(s, _Storage) and ints((offset,)) and ints(size) and ints(stride)
            and len(size) == len(stride) <= 64):
        raise CheckpointError(f"{at}: malformed tensor record (offset {_short(offset)}, "
                              f"size {_short(size)}, stride {_short(stride)})")
    if not isinstance(t.type, _TorchType):
        raise CheckpointError(f"{at}: malformed tensor record (dtype {_short(t.type)})")
    if t.metadata and not (type(t.metadata) is dict and set(t.metadata) <= {"conj", "neg"}):
        raise CheckpointError(f"{at}: unsupported tensor metadata {_short(t.metadata)}")
    for torch_type in (t.type, s.type):
        if torch_type.dtype is None:
            raise CheckpointError(f"{at}: unsupported dtype {torch_type.name} (supported: "
                                  f"{', '.join(_TORCH_NAME.values())})")
    dtype = t.type.dtype
    name, count, numel = _TORCH_NAME[dtype], s.nbytes // dtype.itemsize, math.prod(size)
    if numel:
        end = offset + sum((n - 1) * step for n, step in zip(size, stride))
        if end >= count:
            raise CheckpointError(f"{at}: a tensor of shape {size} (offset {offset}, stride {stride}) "
                                  f"needs {end + 1} elements; its storage holds {count}")
    elif math.prod(n for n in size if n) * dtype.itemsize >= 2**62:
        raise CheckpointError(f"{at}: malformed tensor record (size {_short(size)})")
    if s.where is None:  # first use: its bytes will be read
        s.where = t.where
        budget.spend(s.nbytes, at, f"storage {s.key!r} ({s.numel} x {s.type.name})")
        used.append(s)
    budget.spend(numel * dtype.itemsize, at,
                 f"a {name} tensor of shape {size} (stride {stride}) over a {s.nbytes}-byte storage")


# --- reading: unpickle, check, then read the storages the tensors use --------------------------

def _load_zip(f, check):
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
        with zf.open(pkl[0]) as data:
            obj = _Unpickler(data, lambda pid: _storage_record(storages, pid)).load()
        for storage in check(obj):
            at, name, nbytes = _at(storage.where), f"{prefix}data/{storage.key}", storage.nbytes
            if name not in names:
                raise CheckpointError(f"{at}: missing storage record {name}")
            size = zf.getinfo(name).file_size
            if size < nbytes:
                raise CheckpointError(f"{at}: storage record {name} holds {size} bytes, "
                                      f"{nbytes} declared")
            with zf.open(name) as record:
                storage.raw = record.read(nbytes)
            if len(storage.raw) < nbytes:  # the zip's size field lied
                raise CheckpointError(f"{at}: storage record {name} is truncated")
        return obj, order == "big"


def _no_persistent_id(pid):
    raise CheckpointError(f"unexpected persistent id {_short(pid)}")


def _load_legacy(f, check):
    plain = lambda: _Unpickler(f, _no_persistent_id).load()
    if plain() != _LEGACY_MAGIC:
        raise CheckpointError("a pickle, but not a torch checkpoint (no torch magic number)")
    if plain() != _LEGACY_PROTOCOL:
        raise CheckpointError("unsupported legacy torch protocol; re-save it with torch >= 1.6")
    plain()  # sys_info; torch writes legacy storages little-endian on every host
    storages = {}
    obj = _Unpickler(f, lambda pid: _storage_record(storages, pid)).load()
    used = check(obj)
    for key in plain():
        storage = storages.get(key)
        if storage is None or storage.where is None:
            raise CheckpointError(f"storage {_short(key)} has data but no tensor uses it")
        at, header, nbytes = _at(storage.where), f.read(8), storage.nbytes
        if len(header) < 8 or struct.unpack("<q", header)[0] != storage.numel:
            raise CheckpointError(f"{at}: storage {key!r}: size header missing or wrong "
                                  "(truncated file?)")
        if os.fstat(f.fileno()).st_size - f.tell() < nbytes:
            raise CheckpointError(f"{at}: storage {key!r}: fewer than {nbytes} bytes left "
                                  "(truncated file)")
        storage.raw = f.read(nbytes)
    for storage in used:
        if storage.raw is None:
            raise CheckpointError(f"{_at(storage.where)}: the data of storage {storage.key!r} is "
                                  "missing (truncated file?)")
    return obj, False


# --- building: checked records -> plain Python and owned numpy arrays --------------------------

def _array(t, big_endian):
    """The tensor as a C-order array that owns its data (its bounds were checked in `_check`)."""
    dtype, raw = t.type.dtype, t.storage.raw
    if 0 in t.size:
        out = np.zeros(t.size, dtype)
    else:
        flat = np.frombuffer(raw, dtype, len(raw) // dtype.itemsize)
        view = np.lib.stride_tricks.as_strided(
            flat[t.offset:], t.size, [s * dtype.itemsize for s in t.stride], writeable=False)
        out = np.array(view, order="C")
        if big_endian and dtype.itemsize > 1:  # swap each number (each part of a complex) in place
            unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            out.reshape(-1).view(f"u{unit}").byteswap(inplace=True)
    if t.metadata and t.metadata.get("conj"):  # torch saves conjugate/negative views lazily, as a flag
        out = np.conj(out)
    if t.metadata and t.metadata.get("neg"):
        out = np.negative(out)
    return out


def _all_finite(a):
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + _FINITE_CHUNK]).all() for i in range(0, flat.size, _FINITE_CHUNK))


def _finish(obj, big_endian, allow_nonfinite, memo):
    """Tensors -> arrays (rule 5 checked), Namespaces -> dicts, plain data kept."""
    if id(obj) in memo:
        return memo[id(obj)]
    walk = lambda x: _finish(x, big_endian, allow_nonfinite, memo)
    if isinstance(obj, _Tensor):
        out = _array(obj, big_endian)
        if not allow_nonfinite and out.dtype in _INEXACT and not _all_finite(out):
            bad = out.size - np.count_nonzero(np.isfinite(out))
            raise CheckpointError(
                f"{_at(obj.where)}: a {_TORCH_NAME[out.dtype]} tensor of shape {out.shape} holds {bad} "
                "NaN/Inf value(s); official checkpoints are finite (load_pt(..., "
                "allow_nonfinite=True) reads them as stored)")
    elif isinstance(obj, dict):
        out = memo[id(obj)] = {}
        out.update((walk(k), walk(v)) for k, v in obj.items())
    elif type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(walk(x) for x in obj)
    elif type(obj) in (tuple, set, frozenset):
        out = type(obj)(walk(x) for x in obj)
    elif obj is None or type(obj) in _SCALARS:
        out = obj
    else:  # (`_check` refused it already)
        raise CheckpointError(f"unsupported value in the pickle: {_short(obj)}")
    memo[id(obj)] = out
    return out


def load_pt(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Any:
    """Load a `torch.save` file as plain Python: dicts, lists, numbers, strings, numpy arrays.

    Tensors keep their dtype. Raises CheckpointError (UnsafeCheckpointError for code-running
    pickles) naming the file and, for a value, its key path; see the module docstring's rules.
    allow_nonfinite: read NaN/Inf in floating tensors as stored instead of refusing them.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if not head:
                raise CheckpointError("empty file")
            check = lambda obj: _check(obj, _Budget(os.fstat(f.fileno()).st_size))
            if head.startswith(b"PK"):  # (the check torch uses; tensor bytes may hold zip magic)
                if not zipfile.is_zipfile(f):
                    raise CheckpointError("truncated or corrupt zip archive")
                obj, big_endian = _load_zip(f, check)
            elif head[0] == pickle.PROTO[0]:
                f.seek(0)
                obj, big_endian = _load_legacy(f, check)
            else:
                raise CheckpointError("not a torch checkpoint (neither a torch.save zip archive "
                                      "nor a legacy torch pickle)")
        return _finish(obj, big_endian, allow_nonfinite, {})
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
    """`load_pt(path)[key]`, e.g. key 'gen', 'audio2lip' or 'dis' of an official checkpoint,
    checked to be a state_dict: str keys, tensors of a weights dtype (rule 4), all finite."""
    ckpt = load_pt(path)
    if not isinstance(ckpt, dict) or key not in ckpt:
        have = ", ".join(map(repr, ckpt)) if isinstance(ckpt, dict) else f"none (a {type(ckpt).__name__})"
        raise CheckpointError(f"{path}: no {key!r} entry; top-level keys: {have}")
    sd = ckpt[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: {_at((None, key))}: type {type(sd).__name__}, not a state_dict "
                              "(a dict str -> tensor)")
    for k, v in sd.items():
        at = _at(((None, key), k))
        if type(k) is not str:
            raise CheckpointError(f"{path}: {at}: a state_dict key must be a str, "
                                  f"not {type(k).__name__}")
        if not isinstance(v, np.ndarray):
            raise CheckpointError(f"{path}: {at}: type {type(v).__name__}, not a tensor "
                                  "(a state_dict maps str -> tensor)")
        if v.dtype not in _STATE_DICT_DTYPES:
            raise CheckpointError(f"{path}: {at}: dtype {_TORCH_NAME[v.dtype]} is not a weights dtype "
                                  "(float16/bfloat16/float32/float64 weights, integer or bool buffers)")
    return sd


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
