"""Fuzz tests of every weight-file reader (issue 17, item 1): no file may crash, hang, over-allocate or
end in anything but the reader's own ``CheckpointFormatError`` naming the file.

For each reader (safetensors, torch ``.bin`` zip and legacy, GGUF, EfficientNet ``.pth``, HF sharded
index) a small valid file is built here, then a corpus of mutated files: truncated at many offsets, bytes
flipped, garbage, headers / offsets / counts rewritten, strides / sizes / offsets / storage sizes
enlarged, records removed, shard paths escaping the directory. The corpus of one reader is read in ONE
child process (a segfault fails the test instead of killing pytest) under ``RLIMIT_AS`` (imports + 1 GiB),
a per-file alarm and a process timeout.

Outcomes allowed per file: ``CheckpointFormatError`` whose message contains the file's path (and no
``MemoryError``), or -- only for mutations that may leave a valid file (a flipped data byte, a
truncation that only drops trailing padding) -- a successful read; a truncated file that reads must read
exactly the original tensors.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

# ----------------------------------------------------------------------------- the child

_CHILD = textwrap.dedent(r'''
    import hashlib, json, resource, signal, sys, traceback
    import numpy as np
    from diffjax.checkpoints import efficientnet, gguf as gguf_lib, hf, weight_files
    from diffjax.checkpoints.errors import CheckpointFormatError

    job = json.load(open(sys.argv[1]))
    readers = {
        "safetensors": weight_files.read_safetensors,
        "torch": weight_files.read_torch_bin,
        "efficientnet": efficientnet.read_state_dict,
        "gguf": lambda f: gguf_lib.read_gguf(f)[0],
        "hf_dir": lambda d: hf.read_hf_weights(d)[0],
    }
    read = readers[job["reader"]]
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
            t = read(path)
            digest = {k: [str(v.dtype), list(v.shape), hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()]
                      for k, v in t.items()}
            out.append({"outcome": "ok", "digest": digest})
        except CheckpointFormatError as e:
            out.append({"outcome": "error", "type": type(e).__name__, "msg": str(e)})
        except BaseException as e:  # noqa: BLE001  (anything else is a finding)
            out.append({"outcome": "other", "type": type(e).__name__, "msg": str(e)[:300],
                        "tb": traceback.format_exc()[-1500:]})
        finally:
            signal.alarm(0)
    json.dump(out, open(job["out"], "w"))
''')


def _run_corpus(reader: str, files: list[tuple[str, str]], tmp_path, *, may_load=(), original=None, timeout=240):
    """Reads ``files`` [(path, tag)] in one limited child; asserts every outcome; returns the results."""
    job = tmp_path / f"job_{reader}.json"
    out = tmp_path / f"out_{reader}.json"
    job.write_text(json.dumps({"reader": reader, "files": files, "out": str(out)}))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(job)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, f"child died (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert len(results) == len(files)
    bad = []
    for (path, tag), r in zip(files, results):
        kind = tag.split(":")[0]
        if r["outcome"] == "error":
            if path not in r["msg"] or "MemoryError" in r["msg"]:
                bad.append(f"{tag}: error does not name the file / hides an allocation: {r['msg'][:300]}")
        elif r["outcome"] == "ok":
            if kind not in may_load:
                bad.append(f"{tag}: a corrupt file was read without an error")
            elif kind == "truncate" and original is not None and r["digest"] != original:
                bad.append(f"{tag}: a truncated file read as different tensors")
        else:
            bad.append(f"{tag}: {r['type']}: {r['msg']}\n{r.get('tb', '')}")
    assert not bad, f"{len(bad)} of {len(files)} files misbehaved:\n" + "\n".join(bad[:15])
    return results


def _digest(tensors):
    return {k: [str(v.dtype), list(v.shape), hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()]
            for k, v in tensors.items()}


# ----------------------------------------------------------------------------- generic mutations


def _generic(data: bytes, tmp_path, stem: str, suffix: str, seed: int, n_flips=60, n_trunc=40):
    """Truncations (all of the first 64 bytes' boundaries + spread out), byte flips, garbage, empty."""
    rng = random.Random(seed)
    files = []

    def put(tag, blob):
        p = tmp_path / f"{stem}_{len(files)}{suffix}"
        p.write_bytes(blob)
        files.append((str(p), tag))

    cuts = sorted(set(list(range(0, min(64, len(data)), 3)) + [rng.randrange(len(data)) for _ in range(n_trunc)]
                      + [len(data) - 1, len(data) - 8]))
    for c in cuts:
        if 0 <= c < len(data):
            put(f"truncate:{c}", data[:c])
    for _ in range(n_flips):
        i = rng.randrange(len(data))
        b = bytearray(data)
        b[i] ^= rng.choice([0x01, 0x80, 0xFF, rng.randrange(1, 256)])
        put(f"flip:{i}", bytes(b))
    put("garbage:random", bytes(rng.randrange(256) for _ in range(777)))
    put("garbage:zeros", b"\0" * 4096)
    put("garbage:ff", b"\xff" * 100)
    put("garbage:text", b"this is not a weight file\n" * 20)
    return files


# ----------------------------------------------------------------------------- safetensors


def _st_blob(header: dict | bytes | list, data: bytes, n: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def test_fuzz_safetensors(tmp_path):
    from diffjax.checkpoints import weight_files

    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float16),
               "c": np.arange(4, dtype=np.int64)}
    valid = tmp_path / "valid.safetensors"
    weight_files.write_safetensors(tensors, str(valid))
    original = _digest(weight_files.read_safetensors(str(valid)))
    data = valid.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    files = _generic(data, tmp_path, "st", ".safetensors", seed=1)

    def put(tag, blob):
        p = tmp_path / f"st_h{len(files)}.safetensors"
        p.write_bytes(blob)
        files.append((str(p), tag))

    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return _st_blob(h, body)

    for tag, n_claim in [("zero", 0), ("huge", 1 << 62), ("plus1", n + 1), ("minus1", n - 1), ("filesize", len(data)),
                         ("max", (1 << 64) - 1)]:
        put(f"hlen:{tag}", struct.pack("<Q", n_claim) + data[8:])
    a_off = header["a"]["data_offsets"]
    for tag, fn in [
        ("beyond", lambda h: h["a"].update(data_offsets=[a_off[0], len(body) + 48])),
        ("far", lambda h: h["a"].update(data_offsets=[1 << 60, (1 << 60) + 48])),
        ("negative", lambda h: h["a"].update(data_offsets=[-48, 0])),
        ("reversed", lambda h: h["a"].update(data_offsets=[a_off[1], a_off[0]])),
        ("overlap", lambda h: h["b"].update(data_offsets=[a_off[0], a_off[0] + 10])),
        ("not_pair", lambda h: h["a"].update(data_offsets=[0])),
        ("float_offsets", lambda h: h["a"].update(data_offsets=[0.0, 48.0])),
        ("shape_bigger", lambda h: h["a"].update(shape=[4, 4])),
        ("shape_huge", lambda h: h["a"].update(shape=[1 << 40, 1 << 40])),
        ("shape_negative", lambda h: h["a"].update(shape=[-3, -4])),
        ("shape_bool", lambda h: h["a"].update(shape=[True, 12])),
        ("shape_str", lambda h: h["a"].update(shape="3x4")),
        ("dtype_unknown", lambda h: h["a"].update(dtype="F128")),
        ("dtype_bigger", lambda h: h["a"].update(dtype="F64")),
        ("dtype_int", lambda h: h["a"].update(dtype=7)),
        ("entry_not_object", lambda h: h.update(a=[1, 2])),
        ("missing_offsets", lambda h: h["a"].pop("data_offsets")),
        ("metadata_list", lambda h: h.update(__metadata__=[1])),
    ]:
        put(f"header:{tag}", edit(fn))
    for tag, raw in [("list", b"[1, 2, 3]"), ("string", b'"abc"'), ("number", b"42"), ("null", b"null"),
                     ("bad_utf8", b'{"a\xff": 1}'), ("not_json", b"{not json"), ("deep", b"[" * 100000 + b"]" * 100000),
                     ("dupe", b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                              b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')]:
        put(f"header:{tag}", _st_blob(raw, body))
    results = _run_corpus("safetensors", files, tmp_path, may_load=("flip", "truncate"), original=original)
    assert sum(r["outcome"] == "error" for r in results) > len(files) * 0.6


# ----------------------------------------------------------------------------- torch pickles, crafted


class _StorageRef:
    def __init__(self, key, numel, stype="FloatStorage"):
        self.key, self.numel, self.stype = key, numel, stype


class _Tensor:
    """Pickles as torch's own ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` call."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            pid = ("storage", getattr(torch, obj.stype), obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def _torch_file(path, state, storages: dict[str, bytes], *, legacy=False, extra_records=None, drop_records=(),
                byteorder=b"little", compress=False, legacy_numel=None, keys=None):
    """Writes a torch.save-format file (zip or legacy) from a pickled ``state`` and raw storage bytes."""
    import io

    buf = io.BytesIO()
    _Pickler(buf, legacy).dump(state)
    if not legacy:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", buf.getvalue())
            zf.writestr("archive/byteorder", byteorder)
            for k, raw in storages.items():
                if k not in drop_records:
                    zf.writestr(f"archive/data/{k}", raw)
            for name, raw in (extra_records or {}).items():
                zf.writestr(name, raw)
            zf.writestr("archive/version", b"3\n")
        return
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        f.write(buf.getvalue())
        pickle.dump(list(storages) if keys is None else keys, f, protocol=2)
        for k, raw in storages.items():
            numel = len(raw) // 4 if legacy_numel is None else legacy_numel
            f.write(struct.pack("<q", numel) + raw)


def _crafted_torch(tmp_path, legacy: bool, suffix=".bin"):
    """(valid file path, [(path, tag)]) for the crafted torch corpus of one format."""
    raw = np.arange(24, dtype=np.float32).tobytes()
    st = _StorageRef("0", 24)

    def state(**over):
        a = dict(offset=0, size=(4, 6), stride=(6, 1))
        a.update(over)
        return collections.OrderedDict(w=_Tensor(st, a["offset"], a["size"], a["stride"]),
                                       v=_Tensor(st, 6, (3,), (1,)))

    valid = tmp_path / f"crafted_valid_{legacy}{suffix}"
    _torch_file(valid, state(), {"0": raw}, legacy=legacy)
    files = []
    form = "legacy" if legacy else "zip"

    def put(tag, state_obj, storages=None, **kw):
        p = tmp_path / f"crafted_{form}_{len(files)}{suffix}"
        _torch_file(p, state_obj, {"0": raw} if storages is None else storages, legacy=legacy, **kw)
        files.append((str(p), f"{tag}:{form}"))

    put("stride_enlarged", state(stride=(600, 1)))
    put("stride_huge", state(stride=(1 << 40, 1)))
    put("stride_negative", state(stride=(-6, 1)))
    put("size_enlarged", state(size=(40, 6)))
    put("size_huge", state(size=(1 << 31, 1 << 31)))
    put("size_negative", state(size=(-4, 6)))
    put("offset_enlarged", state(offset=1))
    put("offset_huge", state(offset=1 << 50))
    put("offset_negative", state(offset=-6))
    put("expanded_view", state(size=(1000, 6), stride=(0, 1)))
    put("rank_mismatch", state(size=(4, 6), stride=(1,)))
    put("float_size", state(size=(4.0, 6)))
    put("size_not_tuple", state(size="46"))
    put("storage_short", state(), {"0": raw[:40]})
    put("storage_long_numel", collections.OrderedDict(w=_Tensor(_StorageRef("0", 10 ** 9), 0, (4,), (1,))))
    put("storage_type_unknown", collections.OrderedDict(w=_Tensor(_StorageRef("0", 24, "ComplexFloatStorage"), 0, (4,), (1,))))
    put("not_a_storage", collections.OrderedDict(w=torch._utils._rebuild_tensor_v2))
    put("foreign_global", collections.OrderedDict(w=os.system))
    put("top_level_list", [1, 2, 3])
    if legacy:
        put("keys_mismatch", state(), keys=["0", "1"])
        put("legacy_numel_wrong", state(), legacy_numel=25)
        put("legacy_numel_huge", state(), legacy_numel=1 << 60)
    else:
        put("record_missing", state(), drop_records=("0",))
        put("compressed_record", state(), compress=True)
        put("byteorder_garbage", state(), byteorder=b"sideways")
        put("two_data_pkl", state(), extra_records={"other/data.pkl": b"x"})
    return str(valid), files


# ----------------------------------------------------------------------------- torch .bin (zip and legacy)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fuzz_torch_bin(legacy, tmp_path):
    from diffjax.checkpoints import weight_files

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"w": base, "t": base.t(), "slice": base[1:3, 2:], "h": torch.ones(3).half(), "i": torch.arange(5)}
    valid = tmp_path / "valid.bin"
    torch.save(sd, valid, _use_new_zipfile_serialization=not legacy)
    original = _digest(weight_files.read_torch_bin(str(valid)))
    files = _generic(valid.read_bytes(), tmp_path, "pt", ".bin", seed=2 + legacy)
    crafted_valid, crafted = _crafted_torch(tmp_path, legacy)
    out = weight_files.read_torch_bin(crafted_valid)  # the crafting writer itself makes readable files
    np.testing.assert_array_equal(out["w"], np.arange(24, dtype=np.float32).reshape(4, 6))
    np.testing.assert_array_equal(out["v"], np.arange(6, 9, dtype=np.float32))
    _run_corpus("torch", files + crafted, tmp_path, may_load=("flip", "truncate"), original=original)


# ----------------------------------------------------------------------------- EfficientNet .pth


def test_fuzz_efficientnet_pth(tmp_path):
    from diffjax.checkpoints import efficientnet

    sd = {"_conv_stem.weight": torch.randn(4, 3, 3, 3), "_bn0.running_var": torch.rand(4),
          "_bn0.num_batches_tracked": torch.tensor(3)}
    valid = tmp_path / "valid.pth"
    torch.save({"state_dict": sd}, valid)
    original = _digest(efficientnet.read_state_dict(valid))
    assert set(original) == set(sd)
    files = _generic(valid.read_bytes(), tmp_path, "en", ".pth", seed=4, n_flips=40, n_trunc=25)
    _, crafted = _crafted_torch(tmp_path, legacy=False, suffix=".pth")
    _run_corpus("efficientnet", files + crafted[:12], tmp_path, may_load=("flip", "truncate"), original=original)


# ----------------------------------------------------------------------------- GGUF


def _gguf_valid(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_vocab_size(8)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_token_list([f"t{i}" for i in range(8)])
    rng = np.random.RandomState(0)
    w.add_tensor("token_embd.weight", rng.randn(8, 32).astype(np.float32))
    q = gguf.quants.quantize(rng.randn(32, 32).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", rng.randn(16, 32).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.randn(32).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_fuzz_gguf(tmp_path):
    from diffjax.checkpoints import gguf as gguf_lib

    valid = tmp_path / "valid.gguf"
    _gguf_valid(valid)
    tensors, cfg = gguf_lib.read_gguf(str(valid))
    assert cfg["num_attention_heads"] == 2 and tensors["model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
    original = _digest(tensors)
    data = valid.read_bytes()
    files = _generic(data, tmp_path, "gg", ".gguf", seed=5)

    def put(tag, blob):
        p = tmp_path / f"gg_h{len(files)}.gguf"
        p.write_bytes(blob)
        files.append((str(p), tag))

    def patch(blob, at, fmt, value):
        b = bytearray(blob)
        struct.pack_into(fmt, b, at, value)
        return bytes(b)

    put("header:magic", b"GGUX" + data[4:])
    put("header:version", patch(data, 4, "<I", 99))
    put("header:tensor_count_huge", patch(data, 8, "<Q", 1 << 62))
    put("header:tensor_count_plus", patch(data, 8, "<Q", struct.unpack_from("<Q", data, 8)[0] + 1))
    put("header:kv_count_huge", patch(data, 16, "<Q", 1 << 62))
    put("header:kv_count_plus", patch(data, 16, "<Q", struct.unpack_from("<Q", data, 16)[0] + 1))
    k = data.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens")  # then type u32, item type u32, count u64
    put("array:count_huge", patch(data, k + 8, "<Q", 1 << 62))  # gguf.GGUFReader alone loops for ever on this
    put("array:item_type_unknown", patch(data, k + 4, "<I", 77))
    put("kv:type_unknown", patch(data, k, "<I", 99))
    put("string:len_huge", patch(data, k + 16, "<Q", 1 << 61))  # the first token's length
    key_at = data.index(b"llama.block_count") - 8
    put("kv:key_len_huge", patch(data, key_at, "<Q", 1 << 62))
    put("kv:key_bad_utf8", data[:key_at + 8] + b"\xff" + data[key_at + 9:])
    put("meta:block_count_zero", patch(data, key_at + 8 + len(b"llama.block_count") + 4, "<I", 0))
    put("meta:missing_head_count", data.replace(b"llama.attention.head_count\x04", b"llama.attention.head_cXunt\x04", 1))
    t = data.rindex(b"token_embd.weight") + len(b"token_embd.weight")  # tensor info: n_dims u32, dims u64 x n, type, offset
    put("tensor:n_dims_9", patch(data, t, "<I", 9))
    put("tensor:dim_enlarged", patch(data, t + 4, "<Q", 32 * 1000))
    put("tensor:dim_huge", patch(data, t + 12, "<Q", 1 << 40))
    put("tensor:type_unknown", patch(data, t + 20, "<I", 200))
    put("retype:q8", patch(data, t + 20, "<I", 8))  # F32 -> Q8_0: 32-wide rows, fewer bytes: a valid file
    put("tensor:offset_beyond", patch(data, t + 24, "<Q", len(data)))
    put("tensor:offset_huge", patch(data, t + 24, "<Q", 1 << 62))
    put("tensor:offset_misaligned", patch(data, t + 24, "<Q", 4))
    q = data.rindex(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight")
    put("tensor:overlap", patch(data, q + 24, "<Q", 0))
    put("tensor:q8_row_not_block", patch(data, q + 4, "<Q", 31))
    put("tensor:duplicate_name", data.replace(b"blk.0.attn_k.weight", b"blk.0.attn_q.weight", 1)
        if data.count(b"blk.0.attn_k.weight") == 1 else data[:10])
    k_info = data.rindex(b"blk.0.attn_k.weight") + len(b"blk.0.attn_k.weight")
    put("tensor:k_rows_odd", patch(data, k_info + 12, "<Q", 15))
    _run_corpus("gguf", files, tmp_path, may_load=("flip", "truncate", "retype"), original=original)


# ----------------------------------------------------------------------------- HF dirs: sharded indexes


def test_fuzz_hf_shard_index(tmp_path):
    from diffjax.checkpoints import weight_files

    outside = tmp_path / "outside.safetensors"
    weight_files.write_safetensors({"secret": np.ones(2, np.float32)}, str(outside))
    files = []

    def model_dir(tag, index, shards=None, index_name="model.safetensors.index.json"):
        d = tmp_path / f"dir{len(files)}"
        (d / "sub").mkdir(parents=True)
        for name, t in (shards or {"sub/m-1.safetensors": {"a": np.ones(3, np.float32)},
                                   "m-2.safetensors": {"b": np.zeros(2, np.float32)}}).items():
            if index_name.startswith("pytorch"):
                torch.save({k: torch.from_numpy(v) for k, v in t.items()}, d / name)
            else:
                weight_files.write_safetensors(t, str(d / name))
        (d / index_name).write_text(index if isinstance(index, str) else json.dumps(index))
        files.append((str(d), tag))
        return d

    good = {"weight_map": {"a": "sub/m-1.safetensors", "b": "m-2.safetensors"}}
    ok_dir = model_dir("valid", good)
    for tag, wm in [("dotdot", "../outside.safetensors"), ("deep_dotdot", "sub/../../outside.safetensors"),
                    ("absolute", str(outside)), ("dotdot_many", "../../../../../../etc/passwd"),
                    ("backslash", "..\\outside.safetensors"), ("drive", "C:/outside.safetensors"),
                    ("empty", ""), ("nul", "m-2.safetensors\x00x")]:
        model_dir(f"escape:{tag}", {"weight_map": {"a": "sub/m-1.safetensors", "b": wm}})
    model_dir("escape:bin_dotdot", {"weight_map": {"a": "../outside.bin"}}, index_name="pytorch_model.bin.index.json",
              shards={"m.bin": {"a": np.ones(1, np.float32)}})
    for tag, idx in [("not_json", "{oops"), ("list", "[1]"), ("no_map", {"metadata": {}}), ("map_list", {"weight_map": [1]}),
                     ("value_int", {"weight_map": {"a": 3}}), ("missing_shard", {"weight_map": {"a": "nope.safetensors"}}),
                     ("key_absent", {"weight_map": {**good["weight_map"], "c": "m-2.safetensors"}}),
                     ("wrong_shard", {"weight_map": {"a": "m-2.safetensors", "b": "sub/m-1.safetensors"}})]:
        model_dir(f"index:{tag}", idx)
    model_dir("index:dupe_across_shards", good, shards={"sub/m-1.safetensors": {"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)},
                                                        "m-2.safetensors": {"b": np.zeros(2, np.float32)}})
    results = _run_corpus("hf_dir", files, tmp_path, may_load=("valid",))
    assert results[0]["outcome"] == "ok" and set(results[0]["digest"]) == {"a", "b"}, results[0]
    for (path, tag), r in zip(files, results):
        if tag.startswith("escape"):
            assert "leaves the model directory" in r["msg"] or "not in" in r["msg"], (tag, r["msg"])
    assert str(ok_dir) == files[0][0]
