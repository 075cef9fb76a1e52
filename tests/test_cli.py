"""The `vfleet` command line: help, version, and one-line errors for bad input.

Each case runs `python -m vfleet` as a subprocess, as a user would, with a bounded timeout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_vfleet, start_sim
from vfleet import __version__


def vfleet(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    return run_vfleet(*args, timeout_s=timeout_s)


def sim_fails(*args: str) -> str:
    """Run `vfleet sim` with bad input; return its one error line after checking the shape."""
    res = vfleet("sim", "--model", "m", "--host", "127.0.0.1", "--port", "0", *args)
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "ready on" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, res.stderr
    assert res.stdout == ""
    return errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- help and version ------------------------------------------------------------------------


def test_help() -> None:
    res = vfleet("--help")
    assert res.returncode == 0, res.stderr
    assert "sim" in res.stdout
    assert "--version" in res.stdout


def test_sim_help_lists_the_fault_and_engine_options() -> None:
    res = vfleet("sim", "--help")
    assert res.returncode == 0, res.stderr
    for opt in (
        "--model",
        "--port",
        "--kv-events-config",
        "--max-model-len",
        "--lora-modules",
        "--error-rate",
        "--crash-after-requests",
        "--startup-delay",
    ):
        assert opt in res.stdout, opt


def test_version() -> None:
    res = vfleet("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"vfleet, version {__version__}"


def test_console_script() -> None:
    script = Path(sys.executable).parent / "vfleet"
    res = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    assert res.returncode == 0, res.stderr
    assert __version__ in res.stdout


# -- bad input -------------------------------------------------------------------------------


def test_kv_events_config_that_is_not_json() -> None:
    line = sim_fails("--kv-events-config", "{enable_kv_cache_events: true")
    assert "--kv-events-config" in line
    assert "JSON" in line


def test_kv_events_config_that_is_not_an_object() -> None:
    assert "--kv-events-config" in sim_fails("--kv-events-config", "[1, 2]")


def test_kv_events_config_with_an_unknown_key() -> None:
    cfg = json.dumps({"enable_kv_cache_events": True, "endpointt": "tcp://127.0.0.1:1"})
    line = sim_fails("--kv-events-config", cfg)
    assert "endpointt" in line


def test_kv_events_config_with_an_unknown_publisher() -> None:
    cfg = json.dumps({"enable_kv_cache_events": True, "publisher": "kafka"})
    assert "kafka" in sim_fails("--kv-events-config", cfg)


def test_kv_events_config_with_a_negative_buffer() -> None:
    cfg = json.dumps(
        {"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:1", "buffer_steps": -1}
    )
    assert "buffer_steps" in sim_fails("--kv-events-config", cfg)


def test_kv_events_endpoint_with_an_unknown_transport() -> None:
    cfg = json.dumps({"enable_kv_cache_events": True, "endpoint": "bogus://127.0.0.1:1"})
    assert "bogus://127.0.0.1:1" in sim_fails("--kv-events-config", cfg)


def test_kv_events_replay_endpoint_in_use(busy_port: int) -> None:
    cfg = json.dumps(
        {
            "enable_kv_cache_events": True,
            "endpoint": "tcp://127.0.0.1:1",
            "replay_endpoint": f"tcp://127.0.0.1:{busy_port}",
        }
    )
    assert str(busy_port) in sim_fails("--kv-events-config", cfg)


def test_max_model_len_larger_than_the_kv_cache() -> None:
    line = sim_fails("--num-gpu-blocks", "64", "--block-size", "16", "--max-model-len", "2048")
    assert "max_model_len" in line or "max-model-len" in line
    assert "2048" in line


def test_max_model_len_that_just_fits_starts() -> None:
    # The boundary of the check above: 64 x 16 = 1024 tokens is enough for 1024.
    sp = start_sim("--model", "m", "--num-gpu-blocks", "64", "--max-model-len", "1024")
    assert sp.stop() == 0
    assert "Traceback" not in "".join(sp.log)


def test_lora_module_without_equals() -> None:
    line = sim_fails("--lora-modules", "adapter-without-path")
    assert "--lora-modules" in line
    assert "adapter-without-path" in line


@pytest.mark.parametrize("value", ["2", "-0.1"])
def test_error_rate_out_of_range(value: str) -> None:
    line = sim_fails("--error-rate", value)
    assert "error_rate" in line or "error-rate" in line


def test_hang_rate_out_of_range() -> None:
    line = sim_fails("--hang-rate", "1.5")
    assert "hang_rate" in line or "hang-rate" in line


def test_port_already_in_use(busy_port: int) -> None:
    res = vfleet("sim", "--model", "m", "--host", "127.0.0.1", "--port", str(busy_port))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, res.stderr
    assert str(busy_port) in errors[0]
    assert "in use" in errors[0]


def test_unknown_option_is_a_usage_error() -> None:
    res = vfleet("sim", "--model", "m", "--no-such-flag")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "--no-such-flag" in res.stderr
