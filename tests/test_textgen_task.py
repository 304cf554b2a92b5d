"""The text generation family (issue 25): one decoder table in ``diffusion/decoders.py`` that both text tasks
and their config validators use, so a typo'd ``decoder`` or ``length_mode`` fails at ``validate_task_config``
(before anything trains or loads) naming the field, the value and the valid choices; the table's keyword
arguments; and the one output cutter."""

import numpy as np
import pytest

from diffjax.cli import _load_config_file
from diffjax.diffusion import decoders
from diffjax.diffusion import discrete_sampling as ds
from diffjax.errors import ConfigError
from diffjax.tasks import base
from diffjax.tasks.textgen_task import cut_at
from tests._config_util import REPO, set_fields


def _task_config(name, **fields):
    c = _load_config_file(f"{REPO}/configs/{name}").task
    with c.unlocked():
        set_fields(c, fields)
    return c


@pytest.mark.parametrize("name,field,value,valid", [
    ("rdm_minilm_demo.py:tiny", "decoder", "topkk", decoders.names("absorbing")),
    ("rdm_minilm_demo.py:tiny", "decoder", "refine", decoders.names("absorbing")),  # not a masked decoder
    ("rdm_minilm_demo.py:tiny", "length_mode", "heads", ("head", "fixed")),
    ("rdm_minilm_demo.py:tiny", "block_inner", "block", decoders.BLOCK_INNER),
    ("ar2diff_smollm2_demo.py:tiny", "decoder", "refin", ("",) + decoders.names()),
    ("ar2diff_smollm2_demo.py:tiny,masked", "decoder", "AR", ("",) + decoders.names()),
])
def test_a_typo_in_decoder_or_length_mode_fails_at_config_validation(name, field, value, valid):
    c = _task_config(name, **{field: value})
    with pytest.raises(ConfigError) as e:
        base.validate_task_config(c)  # what build_task and the trainer's config check run, before any load
    msg = str(e.value)
    assert msg.startswith(f"config.task.{field}={value!r} is invalid: expected one of ")
    for v in valid:
        assert repr(v) in msg
    assert f"--config.task.{field}=" in msg


def test_every_decoder_name_validates_where_it_applies():
    for name in decoders.names("absorbing"):
        base.validate_task_config(_task_config("rdm_minilm_demo.py:tiny", decoder=name))
        base.validate_task_config(_task_config("ar2diff_smollm2_demo.py:tiny,masked", decoder=name))
    for name in ("", "ar", "refine"):
        base.validate_task_config(_task_config("ar2diff_smollm2_demo.py:tiny", decoder=name))
    with pytest.raises(ConfigError, match="objective='masked'"):  # an absorbing decoder with the sundae objective
        base.validate_task_config(_task_config("ar2diff_smollm2_demo.py:tiny", decoder="topk"))


def test_table_samplers_and_kwargs():
    assert decoders.DECODERS["refine"].sampler is ds.iterative_refinement_sample
    assert decoders.DECODERS["ar"].sampler is None and decoders.BLOCK_INNER == tuple(ds.BLOCK_INNER)
    fields = dict(num_steps=4, greedy=True, temperature=1.0, top_p=0.0, remask=True, unmask_schedule="linear",
                  threshold=0.9, num_blocks=2, block_inner="threshold", num_samples=3, max_new_tokens=5)
    assert decoders.sampler_kwargs("topk", fields) == dict(num_steps=4, greedy=True, temperature=1.0, top_p=None,
                                                          remask=True, unmask_schedule="linear")
    assert decoders.sampler_kwargs("block", fields) == dict(num_steps=4, greedy=True, temperature=1.0, top_p=None,
                                                           num_blocks=2, inner="threshold", threshold=0.9)
    assert decoders.sampler_kwargs("refine", fields) == dict(num_steps=4, temperature=1.0, num_samples=3, greedy=True)
    assert decoders.sampler_kwargs("ancestral", {"num_steps": 2}) == {"num_steps": 2}  # absent fields: defaults
    with pytest.raises(ValueError, match="unknown decoder 'beam'"):
        decoders.decoder("beam")


def test_cut_at():
    assert cut_at(np.asarray([5, 6, 2, 7]), {2, 0}) == [5, 6]
    assert cut_at([5, 6], {2}) == [5, 6] and cut_at([], {2}) == []


# ----------------------------------------------------------------------------- typed configs (issue 25 part 3)

TYPOS = [  # (config, field, value, the start of the one-line error)
    ("rdm_minilm_demo.py:tiny", "decoder", "topkk", "config.task.decoder='topkk' is invalid: expected one of 'topk'"),
    ("rdm_minilm_demo.py:tiny", "length_mode", "heads", "config.task.length_mode='heads' is invalid: expected one of"),
    ("rdm_minilm_demo.py:tiny", "loss", "rdmm", "config.task.loss='rdmm' is invalid: expected one of 'rdm', 'elbo'"),
    ("rdm_minilm_demo.py:tiny", "lenght_beam", 2, "config.task.lenght_beam is not a field of the MaskedLMConfig"),
    ("ar2diff_smollm2_demo.py:tiny", "decoder", "refin", "config.task.decoder='refin' is invalid: expected one of ''"),
    ("ar2diff_smollm2_demo.py:tiny", "objective", "sundea", "config.task.objective='sundea' is invalid: expected one "
                                                           "of 'sundae', 'masked'"),
    ("ar2diff_smollm2_demo.py:tiny", "num_sample", 2, "config.task.num_sample is not a field of the AR2DiffConfig"),
    ("ar2diff_smollm2_demo.py:tiny", "stage2.derived", "",
     "config.task.stage2.derived is not a field of the StageFields"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Tokenizers, HF configs, pretrained models and data of both text tasks raise if touched."""
    from diffjax.tasks import ar2diff, masked_lm

    def boom(*a, **k):
        raise AssertionError("loaded something before checking the fields")

    for mod, names in ((masked_lm, ("load_tokenizer", "read_hf_config")),
                       (ar2diff, ("_tokenizer", "load_architecture", "prepare_split", "load_text_batcher"))):
        for n in names:
            monkeypatch.setattr(mod, n, boom)


@pytest.mark.parametrize("name,field,value,start", TYPOS)
def test_a_typo_fails_at_validation_and_build_before_anything_loads(nothing_loads, name, field, value, start):
    """For each text task: a typo'd decoder / length_mode / loss / objective, or a field its typed config does not
    declare, is one ConfigError line at ``validate_task_config`` and at ``build_task`` (before any tokenizer,
    HF config, pretrained model or data is read); an undeclared field names its nearest valid one."""
    c = _task_config(name)
    with c.unlocked():
        set_fields(c, {field: value})
    for check in (base.validate_task_config, base.build_task):
        with pytest.raises(ConfigError) as e:
            check(c)
        msg = str(e.value)
        assert msg.startswith(start) and "\n" not in msg, msg
    if "is not a field" in start:
        near = {"lenght_beam": "length_beam", "num_sample": "num_samples", "stage2.derived": "stage2.derive"}[field]
        assert msg.endswith(f"did you mean task.{near}?"), msg


def test_the_typed_configs_are_frozen_and_read_the_configs_as_written():
    from diffjax.tasks.ar2diff_fields import AR2DiffConfig, StageFields
    from diffjax.tasks.masked_lm_fields import MaskedLMConfig

    m = MaskedLMConfig.from_config(_task_config("rdm_minilm_demo.py:tiny"))
    assert m.buckets == (32,) and m.model["num_layers"] == 2 and m.architecture == "" and m.zero_shot_tasks == ()
    a = AR2DiffConfig.from_config(_task_config("ar2diff_smollm2_demo.py:tiny,masked"))
    assert isinstance(a.stage3, StageFields) and a.stage3.derive == "last_words:3" and a.objective == "masked"
    assert a.model["num_hidden_layers"] == 2
    for typed in (m, a, a.stage2):
        with pytest.raises(Exception):
            typed.seed = 1
    assert decoders.sampler_kwargs("topk", m)["num_steps"] == 4  # the decoder table reads the typed config
    rows = {f: rng for f, rng, _ in AR2DiffConfig.describe()}
    assert rows["stage1"] == "StageFields" and rows["objective"] == "one of 'sundae', 'masked'"
