"""configs/rdm_xlmr_wmt14.py at full recipe on tiny stand-ins: random XLM-R weights (2 layers, d 32) and a
word-level tokenizer saved locally with transformers' save_pretrained, and tiny WMT-shaped array_record
data built with a tfds builder in the test. Trains 2 steps from init_from (the MLM head is loaded, only the
length head is fresh), then evaluates (BLEU / EM / length accuracy in results.json) and generates."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the a cat dog house red blue sees runs big small und der die das katze hund haus rot blau sieht".split()


def _config_module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_xlmr(d):
    tr = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["<mask>"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tr.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                     sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    tok.save_pretrained(d)
    cfg = tr.XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1)
    tr.XLMRobertaForMaskedLM(cfg).save_pretrained(d)
    return d


def tiny_wmt(data_dir):
    tfds = pytest.importorskip("tensorflow_datasets")
    import numpy as np

    en, de = WORDS[:11], WORDS[12:]

    class TinyWmt(tfds.core.GeneratorBasedBuilder):
        __module__ = "tiny_wmt_builder"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"de": tfds.features.Text(), "en": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            r = np.random.default_rng(seed)
            for i in range(n):
                k = int(r.integers(2, 6))
                ids = r.integers(0, len(de), k)
                yield i, {"en": " ".join(en[j % len(en)] for j in ids), "de": " ".join(de[j] for j in ids)}

    TinyWmt(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return "tfds:tiny_wmt"


@pytest.mark.slow  # ~40 s of CPU (4.6 min wall on a loaded 2-core box)
def test_xlmr_wmt14_config_trains_evaluates_generates(tmp_path):
    from diffjax.tasks.base import build_task
    from diffjax.train import trainer

    xlmr_dir = tiny_xlmr(str(tmp_path / "xlmr"))
    data = tiny_wmt(str(tmp_path / "tfds"))
    c = _config_module("rdm_xlmr_wmt14").get_config()
    c.unlock()
    c.init_from = xlmr_dir
    c.task.update(dict(data=data, data_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "cache"),
                       buckets=(16, 32), gen_length=32, length_max=16, num_steps=3, eval_max_examples=6,
                       eval_batch_size=4, num_generate=2))
    c.train.update(dict(num_steps=2, global_batch_size=4, log_every=1, checkpoint_every=0))
    c.optimizer.warmup_steps = 1
    c.mesh_shape = (2, 2)
    c.lock()
    assert c.task.weighting == "reciprocal" and c.task.length_beam == 3 and c.task.decoder == "topk"
    wd = str(tmp_path / "wd")
    trainer.train(c, wd)
    report = json.load(open(os.path.join(wd, "init_from.json")))
    assert report["fresh"] and all(p.startswith("length_head") for p in report["fresh"]), report["fresh"]
    res = json.load(open(os.path.join(wd, "results.json")))
    assert {"bleu", "exact_match", "length", "num_examples"} <= set(res) and res["num_examples"] == 6
    task = build_task(c.task, init_from=c.init_from)  # init_from gives the architecture and the tokenizer
    assert task.mask_id == len(WORDS) + 4 and task.use_segments is False  # XLM-R: no token types
    gen = trainer.run_task_method(c, wd, "generate", prompts=["the cat sees"], show_steps=True)
    assert gen["samples"][0]["steps"] and "<mask>" not in gen["samples"][0]["output"]
