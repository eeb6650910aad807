"""Several `jaxdiff` command processes joined into one multi-process run on 127.0.0.1 (CPU
devices, gloo collectives), as on a multi-host pod."""

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(arguments: list[str], processes: int = 2, devices: int = 4) -> list[subprocess.Popen]:
    """``python -m jaxdiff.cli *arguments`` in ``processes`` processes of ``devices`` each. Each
    one's output goes to a file, its ``log`` (a pipe that nobody reads while another process
    waits for this one in a collective would stop both)."""
    port = _free_port()
    others = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    flags = f"{others} --xla_force_host_platform_device_count={devices}"
    started = []
    for index in range(processes):
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by wait)
        process = subprocess.Popen(
            [sys.executable, "-m", "jaxdiff.cli", *arguments],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "XLA_FLAGS": flags,
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(index),
            },
        )
        process.log = log
        started.append(process)
    return started


def wait(processes: list[subprocess.Popen], timeout: float = 600) -> None:
    """Waits for every process; fails with a process's output if it did not exit with 0."""
    for process in processes:
        process.wait(timeout=timeout)
        process.log.seek(0)
        output = process.log.read()
        process.log.close()
        assert process.returncode == 0, output
