"""What the notebooks in colabs/ share: TINY mode, where a notebook's runs go, the accelerator line, and the
command line run in-process.

    from diffjax import colab
    print(colab.device_summary())          # "gpu: 1 x NVIDIA H100 ..." / "cpu: 1 x cpu"
    TINY = colab.tiny()                    # DIFFJAX_TINY=1 (the tests): the ``:tiny`` configs, seconds
    workdir = colab.workdir("text_ood")    # $DIFFJAX_COLAB_WORKDIR/text_ood, /content/workdirs/... in Colab
    colab.cli("demo", "--config=configs/text_ood_demo.py" + (":tiny" if TINY else ""), f"--workdir={workdir}")
    colab.show(fig)                        # a matplotlib figure as a PNG in the notebook, then closed
    results = colab.read_json(workdir, "results.json")
"""

from __future__ import annotations

import io
import json
import os
import sys

TINY_ENV, WORKDIR_ENV = "DIFFJAX_TINY", "DIFFJAX_COLAB_WORKDIR"


def tiny() -> bool:
    """True when ``DIFFJAX_TINY=1``: the notebook runs its ``:tiny`` configs (what the tests execute)."""
    return os.environ.get(TINY_ENV, "") == "1"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def workdir(name: str) -> str:
    """``$DIFFJAX_COLAB_WORKDIR/name``, else ``/content/workdirs/name`` in Colab, else ``workdirs/colab/name``
    (relative to the current directory). A run started there again resumes from its checkpoint."""
    root = os.environ.get(WORKDIR_ENV) or ("/content/workdirs" if in_colab() else os.path.join("workdirs", "colab"))
    return os.path.join(root, name)


def device_summary() -> str:
    """``"<platform>: <count> x <device kind>"`` of ``jax.devices()`` (TPU / GPU / CPU)."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{devices[0].platform}: {len(devices)} x {', '.join(kinds)}"


def cli(*args: str) -> None:
    """``python -m diffjax ARGS...`` in this process (``configs/...`` paths resolve against the checkout);
    raises ``RuntimeError`` on a non-zero exit (the error line is on stderr)."""
    from diffjax.cli import main

    code = main(["diffjax", *args])
    if code:
        raise RuntimeError(f"python -m diffjax {' '.join(args)} exited with {code}")


def show(fig) -> None:
    """Displays a matplotlib figure in the notebook as a PNG (the same picture under any matplotlib backend,
    and after a run that drew with ``ood.report.figure``), then closes it if pyplot holds it."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot = sys.modules.get("matplotlib.pyplot")  # close only where pyplot is already in use: never import it
    if pyplot is not None:
        pyplot.close(fig)
    display(Image(data=buf.getvalue()))


def read_json(*parts: str):
    """The JSON file at ``os.path.join(*parts)`` (a run's ``results.json``, ``threshold.json``, ...)."""
    with open(os.path.join(*parts)) as f:
        return json.load(f)
