"""A real pool for the Python tests: `coordinator serve` and one `worker` from target/release, on free
ports of 127.0.0.1, with the default model. The coordinator's queue holds one prompt, so a burst of
requests is refused with 429. The model is also called `smollm2` (`--model-alias`), and a request naming
a model the pool does not serve is refused (`--strict-model`)."""

import json
import os
import pathlib
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where cargo put the release binaries: MODELPOOL_BIN_DIR, else $CARGO_TARGET_DIR/release, else target/release.
BIN = pathlib.Path(
    os.environ.get("MODELPOOL_BIN_DIR") or pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
)


def _listening_line(process, prefix, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {prefix}")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no {prefix} line within {timeout} s")


def _wait_ready(url, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if json.load(response).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@pytest.fixture(scope="session")
def pool():
    env = dict(os.environ, RUST_LOG="warn")
    coordinator = subprocess.Popen(
        [BIN / "coordinator", "serve", "--port", "0", "--http-port", "0", "--max-queue", "1",
         "--model-alias", "smollm2", "--strict-model"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    worker = None
    try:
        line = _listening_line(coordinator, "MODELPOOL_COORDINATOR_LISTENING")
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        worker = subprocess.Popen(
            [BIN / "worker", "--coordinator", fields["grpc"], "--threads", "2", "--slots", "1"],
            stdout=subprocess.DEVNULL, env=env,
        )
        _wait_ready(fields["http"])
        yield fields["http"]
    finally:
        for process in (worker, coordinator):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
