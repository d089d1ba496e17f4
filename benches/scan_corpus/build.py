"""Build the scanner's regression corpus and its ground truth (not part of the test command).

    benches/.venv/bin/python benches/scan_corpus/build.py PICKLESCAN_GIT MODELSCAN_GIT FICKLING_GIT

Each argument is a git directory of that project (e.g. the `fetch` tool's
/work/.mirror/<owner>+<name>/repo). Writes crates/gauntlet-scan/tests/corpus/:
  picklescan/, modelscan/  their committed test fixtures (files under 1 MB), as is;
  fickling/                the pickles built by fickling's test/test_bypasses.py
                           (each test's `Pickled` captured, then dumped);
  gauntlet/                our own generators for the tricks in issue #18;
  labels.tsv               ground truth from oracle.py (what CPython would import);
  PROVENANCE.md            where every file came from (repository, commit, licence).
Needs fickling installed in the venv (pip install fickling).
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "crates", "gauntlet-scan", "tests", "corpus")
MAX_BYTES = 1 << 20

sys.path.insert(0, HERE)
import oracle  # noqa: E402


def git(repo, *args):
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True).stdout


def commit_of(repo):
    return git(repo, "rev-parse", "HEAD").decode().strip()


def copy_fixtures(repo, prefixes, dest):
    """Every committed file under `prefixes` below MAX_BYTES, bytes as stored."""
    names = git(repo, "ls-tree", "-r", "-l", "HEAD").decode().splitlines()
    copied = []
    for line in names:
        meta, path = line.split("\t", 1)
        size = meta.split()[3]
        if not any(path.startswith(p) for p in prefixes) or size == "-":
            continue
        if path.endswith(".py") or int(size) > MAX_BYTES:
            continue
        data = git(repo, "show", f"HEAD:{path}")
        if data.startswith(b"version https://git-lfs"):
            continue
        name = path.replace("/", "_")
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
        copied.append(name)
    return copied


def fickling_bypasses(repo, dest):
    """Run fickling's bypass tests with `check_safety` replaced by a recorder."""
    source = git(repo, "show", "HEAD:test/test_bypasses.py").decode()
    module = types.ModuleType("fickling_bypasses")
    exec(compile(source, "test_bypasses.py", "exec"), module.__dict__)
    captured = []

    class Result:
        severity = None

    def record(pickled, *args, **kwargs):
        captured.append(pickled)
        r = Result()
        # Comparisons in the tests must not stop the capture.
        class Any:
            def __gt__(self, other):
                return True

            def __lt__(self, other):
                return True

            def __eq__(self, other):
                return True

            def __ge__(self, other):
                return True

            def __le__(self, other):
                return True

            value = 0
            name = "ANY"

        r.severity = Any()
        return r

    module.check_safety = record
    written = []
    cls = module.TestBypasses
    for name in sorted(n for n in dir(cls) if n.startswith("test_")):
        captured.clear()
        test = cls(name)
        try:
            getattr(test, name)()
        except Exception:  # assertions on other analyses; the pickle is what we want
            pass
        for k, pickled in enumerate(captured):
            try:
                data = pickled.dumps()
            except Exception:
                continue
            out = f"{name}{'' if k == 0 else f'_{k}'}.pkl"
            with open(os.path.join(dest, out), "wb") as f:
                f.write(data)
            written.append(out)
    return written


OS_SYSTEM_P2 = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
OS_SYSTEM_P0 = b"cposix\nsystem\np0\n(Vid\np1\ntp2\nRp3\n."


def load_from_bytes(payload, as_text=False):
    head = b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00"
    if as_text:
        text = payload.decode("latin-1").encode("utf-8")
        arg = b"X" + struct.pack("<I", len(text)) + text
    else:
        arg = b"B" + struct.pack("<I", len(payload)) + payload
    return head + arg + b"\x85R."


def zip_bytes(members, deflate=True):
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def npy(descr, data):
    header = "{'descr': %s, 'fortran_order': False, 'shape': (1,), }" % descr
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def tar_bytes(members):
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def own_tricks(dest):
    """Generators for the evasions issue #18 lists; each file is small."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    files = {
        "legacy_protocol0_second_pickle.pt": magic + OS_SYSTEM_P0,
        "legacy_malformed_after_reduce.pt": magic + b"cposix\nsystem\n(Vid\ntR\xff",
        "legacy_five_clean_then_storage.pt": pickle.dumps(1, protocol=2) * 5 + OS_SYSTEM_P0,
        "load_from_bytes_binbytes.pt": load_from_bytes(OS_SYSTEM_P2),
        "load_from_bytes_latin1_text.pt": load_from_bytes(OS_SYSTEM_P2, as_text=True),
        "load_from_bytes_zip.pt": load_from_bytes(zip_bytes([("archive/data.pkl", OS_SYSTEM_P2)])),
        "load_from_bytes_clean.pt": load_from_bytes(pickle.dumps({"a": 1}, protocol=2)),
        "ext1_unregistered.pkl": b"\x80\x02\x82\x01)R.",
        "npy_object_array.npy": npy("'|O'", OS_SYSTEM_P2),
        "npy_structured_object_field.npy": npy("[('O', '<f4'), ('b', '|O')]", OS_SYSTEM_P2),
        "npy_float_array.npy": npy("'<f4'", struct.pack("<f", 1.5)),
        "npz_object_member.npz": zip_bytes([("x.npy", npy("'<f4'", b"\0\0\0\0")), ("y.npy", npy("'|O'", OS_SYSTEM_P2))]),
        "protocol0_plain.pkl": OS_SYSTEM_P0,
        "clean_state_dict_p2.pkl": pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
        "clean_ordereddict_p4.pkl": pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=4),
    }
    clean = pickle.dumps(0, protocol=2)
    files["tar_legacy_malicious_pickle.pt"] = tar_bytes([("storages", clean), ("tensors", clean), ("pickle", OS_SYSTEM_P2)])
    files["tar_legacy_clean.pt"] = tar_bytes([("storages", clean), ("tensors", clean), ("pickle", clean)])
    files["tar_legacy_malicious_storages.pt"] = tar_bytes([("storages", OS_SYSTEM_P0), ("tensors", clean), ("pickle", clean)])
    # A zip whose second member of the same name (the one zipfile reads) is malicious.
    dup = zip_bytes([("archive/data.pkl", pickle.dumps({}, protocol=2)), ("archive/data.pkx", OS_SYSTEM_P2)], deflate=False)
    files["zip_duplicate_name_last_malicious.pt"] = dup.replace(b"archive/data.pkx", b"archive/data.pkl")
    for name, data in files.items():
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
    return sorted(files)


def main():
    picklescan, modelscan, fickling = sys.argv[1:4]
    sources = {}
    for sub in ["picklescan", "modelscan", "fickling", "gauntlet"]:
        path = os.path.join(OUT, sub)
        os.makedirs(path, exist_ok=True)
        for f in os.listdir(path):
            os.remove(os.path.join(path, f))
    sources["picklescan"] = (picklescan, copy_fixtures(picklescan, ["tests/data/", "tests/data2/"], os.path.join(OUT, "picklescan")))
    sources["modelscan"] = (modelscan, copy_fixtures(modelscan, ["tests/data/"], os.path.join(OUT, "modelscan")))
    sources["fickling"] = (fickling, fickling_bypasses(fickling, os.path.join(OUT, "fickling")))
    own = own_tricks(os.path.join(OUT, "gauntlet"))
    rows = []
    for sub in ["picklescan", "modelscan", "fickling", "gauntlet"]:
        for name in sorted(os.listdir(os.path.join(OUT, sub))):
            rel = f"{sub}/{name}"
            label, imports = oracle.label(os.path.join(OUT, rel))
            rows.append((rel, label, " ".join(imports)))
    with open(os.path.join(OUT, "labels.tsv"), "w") as f:
        f.write("# file\tlabel (malicious | benign | fails)\timports CPython would make, as the loaders read the file\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    with open(os.path.join(OUT, "PROVENANCE.md"), "w") as f:
        f.write("# Scanner corpus: provenance\n\nBuilt by `benches/scan_corpus/build.py`; labels by `benches/scan_corpus/oracle.py`.\n\n")
        f.write("| folder | source | commit | licence | files |\n|---|---|---|---|---|\n")
        licences = {"picklescan": "MIT", "modelscan": "Apache-2.0", "fickling": "LGPL-3.0"}
        for sub, (repo, names) in sources.items():
            url = {"picklescan": "mmaitre314/picklescan", "modelscan": "protectai/modelscan", "fickling": "trailofbits/fickling"}[sub]
            how = "committed test fixtures (tests/data*)" if sub != "fickling" else "pickles built by test/test_bypasses.py"
            f.write(f"| {sub}/ | github.com/{url}, {how} | {commit_of(repo)} | {licences[sub]} | {len(names)} |\n")
        f.write(f"| gauntlet/ | our generators in build.py (`own_tricks`) | — | this project's | {len(own)} |\n")
    counts = {}
    for _, label, _ in rows:
        counts[label] = counts.get(label, 0) + 1
    print(len(rows), "files", counts)


if __name__ == "__main__":
    main()
