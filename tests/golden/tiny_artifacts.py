"""Runs every ``tiny`` config end to end through the CLI and digests its artefacts, to show that a
refactor changes nothing a user sees (issue "task families": results.json, results_table.txt,
generate.json, scores.csv identical before and after, timings aside).

    python tests/golden/tiny_artifacts.py run --out=/tmp/before      # in the old checkout
    python tests/golden/tiny_artifacts.py run --out=/tmp/after       # in the new checkout
    python tests/golden/tiny_artifacts.py compare /tmp/before /tmp/after

``run`` writes ``OUT/<run>/`` (the workdirs) and ``OUT/digest.json``: {run: {file: normalised content}}.
Normalisation drops keys that hold wall-clock time (``*_time``, ``*_s``, ``*_seconds``, ``*per_sec*``,
``eta``; ``num_timesteps`` and ``time_mult`` are kept) and absolute paths of the output folder, nothing else.
``digest --out=OUT`` re-reads the artefacts of an earlier ``run`` (e.g. after a change of this normalisation). ``compare`` prints one line per
(run, file): ``same`` or ``DIFFERS`` with the first differing key, and exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys

import numpy as np

TEXTS = ["stocks rally as markets close higher", "to be or not to be that is the question",
         "the weather today is sunny and warm", "government announces new budget plan"]

# (run name, config, [(command, extra flags)]). score inputs are written by _inputs().
RUNS = [
    ("dlsr", "configs/dlsr_mnist_demo.py:tiny",
     [("train", []), ("eval", []), ("sweep", []), ("score", ["--inputs={inputs}/images.npy#layout=NHW"])]),
    ("text_ood", "configs/text_ood_demo.py:tiny",
     [("train", []), ("eval", []), ("sweep", []), ("score", ["--inputs={inputs}/texts.txt"])]),
    ("masked_lm", "configs/rdm_minilm_demo.py:tiny",
     [("train", []), ("eval", []), ("generate", ["--prompt=the cat sat"])]),
    ("ar2diff", "configs/ar2diff_smollm2_demo.py:tiny",
     [("train", []), ("eval", []), ("generate", ["--prompt=the cat sat"])]),
    ("ar2diff_masked", "configs/ar2diff_smollm2_demo.py:tiny,masked",
     [("train", []), ("eval", []), ("generate", ["--prompt=the cat sat"])]),
]
CACHE_FIELD = {"dlsr": "task.feature_cache_dir", "masked_lm": "task.cache_dir", "ar2diff": "task.cache_dir",
               "ar2diff_masked": "task.cache_dir"}
ARTEFACTS = ("results.json", "results_table.txt", "generate.json", "sweep.json", "score.json", "scores.csv",
             "threshold.json")
TIMING = re.compile(r"((^|_)(time|seconds|secs?|elapsed|wall|eta)(_|$)|per_sec|_s$)", re.I)  # not num_timesteps / time_mult


def _inputs(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(os.path.join(folder, "images.npy"), (rng.random((5, 28, 28)) * 255).astype(np.uint8))
    with open(os.path.join(folder, "texts.txt"), "w") as f:
        f.write("\n".join(TEXTS) + "\n")


def _normalise(obj, root: str):
    if isinstance(obj, dict):
        return {k: _normalise(v, root) for k, v in sorted(obj.items()) if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [_normalise(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<OUT>")
    return obj


def _read(path: str, root: str):
    text = open(path).read()
    if path.endswith(".json"):
        return _normalise(json.loads(text), root)
    if path.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        return [[c.replace(root, "<OUT>") for c in r] for r in rows]
    return text.replace(root, "<OUT>")


def digest(out: str) -> dict:
    """{run: {artefact: normalised content}} of the workdirs under ``out`` (return codes from digest.json)."""
    old = {}
    if os.path.exists(os.path.join(out, "digest.json")):
        old = json.load(open(os.path.join(out, "digest.json")))
    result = {}
    for name, _, _ in RUNS:
        workdir = os.path.join(out, name)
        result[name] = {k: v for k, v in old.get(name, {}).items() if k.endswith((".rc", ".stderr_tail"))}
        for art in ARTEFACTS:
            path = os.path.join(workdir, art)
            if os.path.exists(path):
                result[name][art] = _read(path, out)
    return result


def _write_digest(out: str, result: dict) -> None:
    with open(os.path.join(out, "digest.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"wrote {os.path.join(out, 'digest.json')}")


def run(out: str) -> int:
    out = os.path.abspath(out)
    inputs = os.path.join(out, "_inputs")
    _inputs(inputs)
    rcs = {}
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    for name, config, commands in RUNS:
        workdir = os.path.join(out, name)
        rcs[name] = {}
        for command, extra in commands:
            args = [sys.executable, "-m", "diffjax", command, f"--config={config}", f"--workdir={workdir}"]
            if name in CACHE_FIELD:  # caches inside OUT, so runs on two revisions share nothing
                args.append(f"--config.{CACHE_FIELD[name]}={os.path.join(out, '_cache', name)}")
            args += [a.format(inputs=inputs) for a in extra]
            if command == "score":
                args.append(f"--output={os.path.join(workdir, 'scores.csv')}")
            print("+", " ".join(args[1:]), flush=True)
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            rcs[name][f"{command}.rc"] = proc.returncode
            if proc.returncode:
                rcs[name][f"{command}.stderr_tail"] = proc.stderr[-400:].replace(out, "<OUT>")
                print(proc.stderr[-2000:], flush=True)
    artefacts = digest(out)
    _write_digest(out, {name: dict(artefacts[name], **codes) for name, codes in rcs.items()})
    return 0


def _first_diff(a, b, where=""):
    if type(a) is not type(b):
        return where or "<root>"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k} (only in {'after' if k not in a else 'before'})"
            d = _first_diff(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_diff(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {str(a)[:80]!r} vs {str(b)[:80]!r}"


def compare(before: str, after: str) -> int:
    a = json.load(open(os.path.join(before, "digest.json")))
    b = json.load(open(os.path.join(after, "digest.json")))
    bad = 0
    for name in sorted(set(a) | set(b)):
        for art in sorted(set(a.get(name, {})) | set(b.get(name, {}))):
            d = _first_diff(a.get(name, {}).get(art), b.get(name, {}).get(art))
            bad += d is not None
            print(f"{name:16s} {art:24s} {'same' if d is None else 'DIFFERS ' + d}")
    print(f"{bad} difference(s)")
    return int(bad > 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    d = sub.add_parser("digest")
    d.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args(argv)
    if args.cmd == "digest":
        _write_digest(os.path.abspath(args.out), digest(os.path.abspath(args.out)))
        return 0
    return run(args.out) if args.cmd == "run" else compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
