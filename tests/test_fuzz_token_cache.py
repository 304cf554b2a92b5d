"""Fuzz test of the token-cache reader (issue 24, item 12), in the style of ``test_fuzz_readers.py``:
a small valid ``tokens-<key>.npz`` is built, then a corpus of mutated files -- truncated at many
offsets, bytes flipped, garbage, and crafted but well-formed archives (offsets past the ids, offsets
that decrease or do not start at 0, ids >= vocab or < 0, prompt / target counts that differ, wrong
dtypes and ranks, pickled objects, missing / extra / compressed members, a header declaring 10^12
elements). The corpus is read in ONE child process under ``RLIMIT_AS`` (imports + 1 GiB) with a
per-file alarm.

Outcomes allowed per file: ``TokenCacheError`` whose message contains the file's path (no
``MemoryError``), or -- for a flipped byte that leaves the archive valid -- exactly the original arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from diffjax.data.text import cache

VOCAB = 50

_CHILD = textwrap.dedent(r'''
    import hashlib, json, resource, signal, sys, traceback
    import numpy as np
    from diffjax.data.text import cache

    job = json.load(open(sys.argv[1]))
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
    limit = vm + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def alarm(*_):
        raise TimeoutError("reader took more than 10 s")
    signal.signal(signal.SIGALRM, alarm)

    out = []
    for path, tag in job["files"]:
        signal.alarm(10)
        try:
            t = cache.read_token_cache(path, "k", vocab_size=job["vocab"])
            arrays = [t.prompt.ids, t.prompt.offsets, t.target.ids, t.target.offsets]
            digest = [[str(a.dtype), list(a.shape), hashlib.sha1(a.tobytes()).hexdigest()] for a in arrays]
            out.append({"outcome": "ok", "digest": digest + [t.name]})
        except cache.TokenCacheError as e:
            out.append({"outcome": "error", "msg": str(e)})
        except BaseException as e:  # noqa: BLE001  (anything else is a finding)
            out.append({"outcome": "other", "type": type(e).__name__, "msg": str(e)[:300],
                        "tb": traceback.format_exc()[-1500:]})
        finally:
            signal.alarm(0)
    json.dump(out, open(job["out"], "w"))
''')

GOOD = dict(prompt_ids=np.asarray([3, 4, 5], np.int32), prompt_offsets=np.asarray([0, 2, 2, 3], np.int64),
            target_ids=np.asarray([7, 8, 9, 10, 11, 49], np.int32), target_offsets=np.asarray([0, 1, 4, 6], np.int64),
            name=np.asarray("d.tsv"))


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _with(**changes) -> bytes:
    arrays = {**GOOD, **changes}
    return _npz(**{k: v for k, v in arrays.items() if v is not None})


def _raw_npy(header: str, data: bytes) -> bytes:
    h = header.encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _crafted() -> list[tuple[str, bytes]]:
    good = _members(_npz(**GOOD))
    i32, i64 = np.int32, np.int64
    return [
        ("offsets_past_data", _with(target_offsets=np.asarray([0, 1, 4, 60], i64))),
        ("offsets_past_data_prompt", _with(prompt_offsets=np.asarray([0, 2, 2, 2 ** 40], i64))),
        ("offsets_decrease", _with(target_offsets=np.asarray([0, 4, 1, 6], i64))),
        ("offsets_negative", _with(target_offsets=np.asarray([0, -3, 4, 6], i64))),
        ("offsets_not_from_0", _with(target_offsets=np.asarray([1, 1, 4, 6], i64))),
        ("offsets_empty", _with(prompt_offsets=np.zeros(0, i64), target_offsets=np.zeros(0, i64),
                                prompt_ids=np.zeros(0, i32), target_ids=np.zeros(0, i32))),
        ("ids_at_vocab", _with(target_ids=np.asarray([7, 8, 9, 10, 11, VOCAB], i32))),
        ("ids_huge", _with(prompt_ids=np.asarray([3, 2 ** 31 - 1, 5], i32))),
        ("ids_negative", _with(target_ids=np.asarray([7, -1, 9, 10, 11, 12], i32))),
        ("counts_differ", _with(prompt_offsets=np.asarray([0, 2, 3], i64))),
        ("ids_float", _with(target_ids=np.asarray([7, 8, 9, 10, 11, 12], np.float32))),
        ("ids_int64", _with(target_ids=np.asarray([7, 8, 9, 10, 11, 12], i64))),
        ("ids_2d", _with(target_ids=np.asarray([[7, 8, 9], [10, 11, 12]], i32))),
        ("offsets_int32", _with(target_offsets=np.asarray([0, 1, 4, 6], i32))),
        ("ids_big_endian", _with(target_ids=np.asarray([7, 8, 9, 10, 11, 12], ">i4"))),
        ("name_not_str", _with(name=np.asarray(5))),
        ("name_1d", _with(name=np.asarray(["a", "b"]))),
        ("object_pickle", _zip({**good, "target_ids.npy": _raw_npy(
            "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", b"\x80\x04N.")})),
        ("missing_member", _with(prompt_ids=None)),
        ("extra_member", _zip({**good, "extra.npy": good["name.npy"]})),
        ("compressed", _zip(good, zipfile.ZIP_DEFLATED)),
        ("header_huge_shape", _zip({**good, "target_ids.npy": _raw_npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1000000000000,), }", b"\x07\x00\x00\x00" * 6)})),
        ("header_short_data", _zip({**good, "target_ids.npy": _raw_npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }", b"\x07\x00\x00\x00" * 5)})),
        ("header_long_data", _zip({**good, "target_ids.npy": _raw_npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }", b"\x07\x00\x00\x00" * 7)})),
        ("header_negative_shape", _zip({**good, "target_ids.npy": _raw_npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (-6,), }", b"\x07\x00\x00\x00" * 6)})),
        ("header_garbage", _zip({**good, "target_ids.npy": _raw_npy("{'descr': <i4, oops", b"")})),
        ("not_npy", _zip({**good, "target_ids.npy": b"hello"})),
    ]


def _generic(data: bytes, seed: int, n_flips=80, n_trunc=40) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    cuts = sorted(set(list(range(0, min(64, len(data)), 3)) + [rng.randrange(len(data)) for _ in range(n_trunc)]
                      + [len(data) - 1, len(data) - 22]))
    out += [(f"truncate:{c}", data[:c]) for c in cuts if 0 <= c < len(data)]
    for _ in range(n_flips):
        i = rng.randrange(len(data))
        b = bytearray(data)
        b[i] ^= rng.choice([0x01, 0x80, 0xFF, rng.randrange(1, 256)])
        out.append((f"flip:{i}", bytes(b)))
    out += [("garbage:random", bytes(rng.randrange(256) for _ in range(777))), ("garbage:zeros", b"\0" * 4096),
            ("garbage:text", b"this is not a token cache\n" * 20), ("garbage:empty", b"")]
    return out


def test_fuzz_token_cache(tmp_path):
    valid = tmp_path / "tokens-valid.npz"
    valid.write_bytes(_npz(**GOOD))
    t = cache.read_token_cache(str(valid), "k", vocab_size=VOCAB)  # the valid file reads back exactly
    np.testing.assert_array_equal(t.target.ids, GOOD["target_ids"])
    assert [list(t.prompt[i]) for i in range(3)] == [[3, 4], [], [5]] and t.name == "d.tsv"
    original = [[str(a.dtype), list(a.shape), hashlib.sha1(a.tobytes()).hexdigest()]
                for a in (GOOD["prompt_ids"], GOOD["prompt_offsets"], GOOD["target_ids"], GOOD["target_offsets"])]
    original.append("d.tsv")

    files = []
    for i, (tag, blob) in enumerate(_crafted() + _generic(valid.read_bytes(), seed=0)):
        p = tmp_path / f"tokens-{i}.npz"
        p.write_bytes(blob)
        files.append((str(p), tag))
    job, out = tmp_path / "job.json", tmp_path / "out.json"
    job.write_text(json.dumps({"files": files, "out": str(out), "vocab": VOCAB}))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(job)], capture_output=True, text=True, timeout=240,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, f"child died (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    bad, crafted = [], {tag for tag, _ in _crafted()}
    for (path, tag), r in zip(files, results):
        if r["outcome"] == "error":
            if path not in r["msg"] or "MemoryError" in r["msg"] or "delete it" not in r["msg"]:
                bad.append(f"{tag}: error does not name the file / the fix: {r['msg'][:300]}")
        elif r["outcome"] == "ok":
            if tag in crafted or not tag.startswith("flip") or r["digest"] != original:
                bad.append(f"{tag}: a corrupt file was read without an error: {r['digest']}")
        else:
            bad.append(f"{tag}: {r['type']}: {r['msg']}\n{r.get('tb', '')}")
    assert not bad, f"{len(bad)} of {len(files)} files misbehaved:\n" + "\n".join(bad[:15])
    assert all(r["outcome"] == "error" for (_, tag), r in zip(files, results) if tag in crafted)


class _Tok:
    """A stand-in tokenizer: one id per character (mod 40), counting its calls."""

    fingerprint, vocab_size = "fake-tok", 40

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return [[ord(c) % 40 for c in t] for t in texts]


def test_cache_is_keyed_on_content_and_a_crafted_file_is_refused(tmp_path):
    from diffjax.data.text import parse_source, tokenize_cached

    data, cache_dir, tok = tmp_path / "d.txt", str(tmp_path / "cache"), _Tok()
    data.write_text("abc\nxyz\n")
    a = tokenize_cached(parse_source(str(data)), tok, cache_dir=cache_dir)
    st = os.stat(data)
    data.write_text("abd\nxyz\n")  # same size; the mtime put back, as cp -p / rsync -t / tar do
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(data).st_size == st.st_size and os.stat(data).st_mtime_ns == st.st_mtime_ns
    b = tokenize_cached(parse_source(str(data)), tok, cache_dir=cache_dir)
    assert b.key != a.key and tok.calls == 2 and list(b.target[0]) == [ord(c) % 40 for c in "abd"]
    # the same bytes under another mtime: the cache hits
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    assert tokenize_cached(parse_source(str(data)), tok, cache_dir=cache_dir).key == b.key and tok.calls == 2
    # a crafted file at the key's path: refused on load, naming the file
    path = cache.cache_path(cache_dir, b.key)
    with open(path, "wb") as f:
        f.write(_with(target_offsets=np.asarray([0, 3, 600], np.int64), prompt_offsets=np.zeros(3, np.int64),
                      prompt_ids=np.zeros(0, np.int32)))
    with pytest.raises(cache.TokenCacheError, match=rf"token cache {path} .*target_offsets end at 600 .*delete it"):
        tokenize_cached(parse_source(str(data)), tok, cache_dir=cache_dir)
    with open(path, "wb") as f:
        f.write(_with(target_ids=np.asarray([1, 2, 3, 4, 5, 45], np.int32)))
    with pytest.raises(cache.TokenCacheError, match=r"token id 45 is outside the tokenizer's vocabulary \[0, 40\)"):
        tokenize_cached(parse_source(str(data)), tok, cache_dir=cache_dir)
    assert isinstance(cache.TokenCacheError("x"), FileNotFoundError)  # the CLI's one-line error family
