"""SIGKILL a training subprocess mid-run and rerun it (shared by the resume acceptance tests)."""

import os
import signal
import subprocess
import time

from diffjax.checkpoints import orbax as ck


def kill_then_rerun(cmd, *, cwd, workdir, kill_at: str, deadline_s: float = 240, rerun_timeout_s: float = 300):
    """Runs ``cmd``, SIGKILLs it when a stdout line starts with ``kill_at``, checks it died after a
    checkpoint, reruns ``cmd`` to the end. Returns ``(killed_at_step, rerun CompletedProcess)``."""
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.time() + deadline_s
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(kill_at):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.time() < deadline, "".join(seen[-20:])
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    c = ck.Checkpointer(os.path.join(str(workdir), "checkpoints"))
    killed_at = c.latest_step()
    c.close()
    assert killed_at is not None, "".join(seen[-30:])
    rerun = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=rerun_timeout_s)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed from checkpoint step {killed_at}" in rerun.stdout
    return killed_at, rerun
