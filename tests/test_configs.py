"""Every config file builds every variant it names: a locked ConfigDict whose trainer fields pass
the pre-run checks (a demo must not fail on a typo before it starts), and an unknown arg is refused."""

import pytest

from diffjax.cli import _load_config_file
from diffjax.train.validate import validate_config
from tests._config_util import REPO

VARIANTS = {
    "demo.py": [None], "gaussian2d.py": [None, "small"], "dlsr_mnist_demo.py": [None, "tiny"],
    "dlsr_cifar10.py": [None, "small"], "dlsr_celeba.py": [None],
    "rdm_minilm_demo.py": [None, "tiny"], "rdm_xlmr_wmt14.py": [None, "large"], "rdm_instruct.py": [None, "embedded"],
    "ar2diff_smollm2_demo.py": [None, "tiny", "masked"], "ar2diff_full.py": ["translation", "squad"],
    "text_ood_demo.py": [None, "tiny"], "text_ood_paper.py": ["sst2", "imdb", "trec", "20ng"],
}


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_builds_locked_and_valid(name, arg):
    path = f"{REPO}/configs/{name}" + (f":{arg}" if arg else "")
    config = _load_config_file(path)
    assert config.is_locked, name
    validate_config(config)
    with pytest.raises(AttributeError):
        config.not_a_field = 1


def test_every_config_file_is_listed():
    import os

    assert sorted(f for f in os.listdir(f"{REPO}/configs") if f.endswith(".py")) == sorted(VARIANTS)


@pytest.mark.parametrize("name", ["gaussian2d.py", "dlsr_mnist_demo.py", "text_ood_paper.py"])
def test_unknown_arg_is_refused(name):
    with pytest.raises(ValueError, match="arg"):
        _load_config_file(f"{REPO}/configs/{name}:nonsense")
