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
