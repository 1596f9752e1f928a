"""Running the real i-PI server in tests: input files, start/stop, outputs (not a library API)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

IPI = shutil.which("i-pi")
needs_ipi = pytest.mark.skipif(IPI is None, reason="the i-pi command is not installed")


def simulation_xml(
    *,
    forcefields: str,
    system: str,
    outputs: str,
    steps: int,
    seed: int = 31415,
) -> str:
    """A complete i-PI input; ``floatformat`` full precision so comparisons are not print-limited."""
    return f"""<simulation verbosity='low' safe_stride='100000' floatformat='%.15e'>
  <output prefix='sim'>
{outputs}
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> {seed} </seed></prng>
{forcefields}
{system}
</simulation>
"""


def ffsocket_unix(name: str, address: str, extra: str = "") -> str:
    return f"""  <ffsocket name='{name}' mode='unix' pbc='false'>
    <address> {address} </address>
    <exit_on_disconnect> true </exit_on_disconnect>
    {extra}
  </ffsocket>"""


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sockets_prefix(folder: Path) -> str:
    prefix = str(folder) + os.sep
    if len(prefix) > 90:
        pytest.skip(f"temporary folder path too long for a UNIX socket: {prefix}")
    return prefix


@contextmanager
def ipi_server(folder: Path, xml: str, timeout: float = 120.0, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Start ``i-pi input.xml`` in ``folder`` (UNIX sockets under ``folder``); kill it on exit."""
    (folder / "input.xml").write_text(xml)
    log = open(folder / "ipi.log", "w")
    process = subprocess.Popen(
        [IPI, "input.xml", "-S", sockets_prefix(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def wait_for_path(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"i-PI exited (code {process.returncode}) before creating {path}:\n{ipi_log(path.parent)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def ipi_log(folder: Path) -> str:
    log = folder / "ipi.log"
    return log.read_text()[-4000:] if log.exists() else "(no i-PI log)"


class Background:
    """Run ``function`` in a daemon thread; ``result()`` re-raises its exception."""

    def __init__(self, function: Callable[[], object]) -> None:
        self.value: object = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.value = function()
            except BaseException as error:  # handed to the test thread
                self.error = error

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> object:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the driver did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


def run_with_driver(folder: Path, xml: str, driver: Callable[[], object], timeout: float = 120.0) -> object:
    """Run i-PI on ``xml`` with ``driver()`` (in a thread) as its client; both must finish cleanly."""
    with ipi_server(folder, xml, timeout) as process:
        client = Background(driver)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if not client.thread.is_alive() and client.error is not None:
                raise client.error  # the driver failed: no point waiting for i-PI
            if time.monotonic() > deadline:
                raise AssertionError(f"i-PI did not finish within {timeout} s:\n{ipi_log(folder)}")
            time.sleep(0.05)
        code = process.returncode
        value = client.result(timeout=30)
    assert code == 0, f"i-PI failed (exit {code}):\n{ipi_log(folder)}"
    return value


def read_properties(path: Path) -> np.ndarray:
    """i-PI's properties file as a 2D array (rows = output steps)."""
    return np.atleast_2d(np.loadtxt(path))


def saved_lr_model(tmp_path_factory) -> str:
    """The tiny MACE-LR test model (charges+latent heads), saved once per test session."""
    path = tmp_path_factory.getbasetemp() / "ipi_lr.model"
    if not path.exists():
        import torch
        from model_helpers import lr_model

        torch.save(lr_model(heads=("charges", "latent")), path)
    return str(path)
