"""Ground truth for the scanner corpus: what CPython's unpickler would import
when a file is read the way `torch.load`, `pickle.load` and `numpy.load` read it.

Nothing is imported or run: `find_class` records the `(module, name)` it is
asked for and hands back a stand-in class whose instances accept every call.
The one exception is `torch.storage._load_from_bytes`, whose stand-in labels its
argument in turn (that callable `torch.load`s it).

label(path) -> (label, imports):
  malicious  some reading would import a callable outside the tensor-rebuild
             allow-list (nobody can vouch for what it does when called);
  benign     some reading loads, importing allow-listed callables only;
  fails      every reading raises before importing anything outside the list.
"""

import io
import os
import pickle
import struct

# The scanner's allow-list, read from docs/scan.md (a cargo test ties that
# list to the code in crates/gauntlet-scan/src/lib.rs).
def documented_allow_list():
    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "scan.md")
    text = open(docs, encoding="utf-8").read()
    listed = text.split("<!-- allow-list -->")[1].split("<!-- /allow-list -->")[0]
    return {line.strip()[3:-1] for line in listed.splitlines() if line.startswith("- `")}


SAFE = documented_allow_list()

# Legacy typed tensor classes (torch.FloatTensor, ...), as the scanner allows them.
LEGACY_TYPES = {"Double", "Long", "Float", "Int", "Half", "BFloat16", "Short", "Char", "Byte", "Bool"}

LEGACY_PICKLES = 5
MAX_DEPTH = 3


def is_safe(full):
    module, _, name = full.rpartition(".")
    legacy_tensor = name.endswith("Tensor") and name[: -len("Tensor")] in LEGACY_TYPES
    return full in SAFE or (module == "torch" and (name.endswith("Storage") or legacy_tensor))


class Stand:
    """An instance that accepts whatever the unpickler does with it."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Stand()

    def __setstate__(self, state):
        pass

    def __getattr__(self, name):
        return Stand()

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class Recorder(pickle.Unpickler):
    def __init__(self, file, imports, depth):
        super().__init__(file, encoding="latin1")
        self.imports = imports
        self.depth = depth

    def find_class(self, module, name):
        full = f"{module}.{name}"
        self.imports.append(full)
        if full == "torch.storage._load_from_bytes":
            depth = self.depth

            def load_from_bytes(data, *args, **kwargs):
                if isinstance(data, str):
                    data = data.encode("latin-1")
                if depth < MAX_DEPTH and isinstance(data, (bytes, bytearray)):
                    read_torch(bytes(data), self.imports, depth + 1)
                return Stand()

            return load_from_bytes
        return type(name if name.isidentifier() else "Imported", (Stand,), {})

    def persistent_load(self, pid):
        return Stand()


def read_pickles(data, imports, depth, count):
    """Up to `count` pickles back to back; True when the first one loaded."""
    stream = io.BytesIO(data)
    first_ok = False
    for k in range(count):
        if stream.tell() >= len(data):
            break
        try:
            Recorder(stream, imports, depth).load()
        except Exception:
            break
        if k == 0:
            first_ok = True
    return first_ok


def read_npy(data, imports, depth):
    if not data.startswith(b"\x93NUMPY") or len(data) < 10:
        return False
    import numpy as np

    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        dtype = read_header(stream)[2]
    except Exception:
        return False
    if dtype.hasobject:
        return read_pickles(data[stream.tell():], imports, depth, 1)
    return True


def zip_members(data):
    """(name, bytes) of every central-directory entry, read the tolerant way
    torch's zip reader (miniz) does: the encryption flag, a local header whose
    name differs and a wrong CRC do not stop it (Python's zipfile refuses all
    three, which is how picklescan's fixtures hide pickles from it)."""
    import zlib

    end = data.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(data):
        return None
    count, size, offset = struct.unpack_from("<HII", data, end + 10)
    members = []
    at = offset
    for _ in range(count):
        if data[at:at + 4] != b"PK\x01\x02":
            break
        method, = struct.unpack_from("<H", data, at + 10)
        compressed, = struct.unpack_from("<I", data, at + 20)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, at + 28)
        local, = struct.unpack_from("<I", data, at + 42)
        name = data[at + 46:at + 46 + name_len].decode("utf-8", "replace")
        at += 46 + name_len + extra_len + comment_len
        if data[local:local + 4] != b"PK\x03\x04":
            continue
        local_name, local_extra = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + local_name + local_extra
        raw = data[start:start + compressed]
        try:
            body = raw if method == 0 else zlib.decompressobj(-15).decompress(raw)
        except Exception:
            continue
        members.append((name, body))
    return members


def read_zip(data, imports, depth):
    members = zip_members(data)
    if members is None:
        return False
    ok = False
    for name, member in members:  # every entry, duplicated names included
        if name.endswith((".pkl", ".pickle")):
            ok |= read_pickles(member, imports, depth, 1)
        elif name.endswith(".npy"):
            ok |= read_npy(member, imports, depth)
    return ok


def read_tar(data, imports, depth):
    """`torch.load`'s oldest format: members `storages`, `tensors`, `pickle`
    unpickled (their leading pickles; raw storage bytes follow in the first
    two). None when `data` is not a tar archive."""
    import tarfile

    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = archive.getmembers()
    except tarfile.TarError:
        return None
    ok = False
    for member in members:
        if member.name not in ("storages", "tensors", "pickle") or not member.isfile():
            continue
        body = archive.extractfile(member).read()
        ok |= read_pickles(body, imports, depth, LEGACY_PICKLES) and member.name == "pickle"
    return ok


def read_torch(data, imports, depth):
    """`torch.load`: zip by magic, else a tar archive, else the legacy stream
    of pickles."""
    if data.startswith(b"PK\x03\x04"):
        return read_zip(data, imports, depth)
    tar = read_tar(data, imports, depth)
    if tar is not None:
        return tar
    return read_pickles(data, imports, depth, LEGACY_PICKLES)


def label(path):
    with open(path, "rb") as f:
        data = f.read()
    imports = []
    if data.startswith(b"\x93NUMPY"):
        ok = read_npy(data, imports, 0)
    else:
        ok = read_torch(data, imports, 0)
    unique = sorted(set(imports))
    if any(not is_safe(i) for i in unique):
        return "malicious", unique
    return ("benign" if ok else "fails"), unique


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        print(p, *label(p))
