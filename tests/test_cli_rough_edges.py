"""What a new user meets first at the command line: a busy port, and terminal conversations free of
log lines. Each test runs the real `python -m assistant …` as a subprocess."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(tmp_path: Path, model_dir: Path, nlu) -> dict[str, str]:
    """A fresh data directory and the session's trained model (the `nlu` fixture saved it)."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "LOG_FORMAT"}}
    return {**env, "DATA_DIR": str(tmp_path / "var"), "MODEL_DIR": str(model_dir)}


def run_cli(env: dict[str, str], *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistant", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_serve_on_a_busy_port_says_so_in_one_line_with_a_port_to_use(cli_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(cli_env, "serve", "--port", str(port), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"端口 {port} 已被占用" in lines[0] and "port" in lines[0] and "in use" in lines[0]
    suggested = int(re.search(r"try --port (\d+)", lines[0]).group(1))
    assert suggested != port
    with socket.socket() as probe:  # the suggestion is a port that is free
        probe.bind(("127.0.0.1", suggested))


@pytest.mark.parametrize(("command", "line", "expected"), [
    (["chat"], "我想办老年证\n", "身份证"),
    (["call"], "我想办老年证\n", "身份证"),
])
def test_terminal_conversations_carry_no_log_lines(cli_env, command, line, expected):
    result = run_cli(cli_env, *command, stdin=line)  # first run: the store is created (migrations)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    for stream in (result.stdout, result.stderr):
        assert "INFO" not in stream and "alembic" not in stream.lower(), stream


def test_verbose_brings_the_log_lines_back(cli_env):
    result = run_cli(cli_env, "-v", "chat", stdin="你好\n")
    assert result.returncode == 0
    assert "alembic" in result.stderr.lower() and "INFO" in result.stderr


def test_staff_add_prints_its_result_only(cli_env):
    result = run_cli(cli_env, "staff", "add", "wangli", "--role", "admin", stdin="a-long-enough-password-2026\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["username"] == "wangli"
    assert "INFO" not in result.stderr and "alembic" not in result.stderr.lower(), result.stderr


def test_train_if_missing_keeps_the_model_it_has(cli_env, model_dir):
    result = run_cli(cli_env, "train", "--if-missing")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["trained"] is False and Path(report["model"]).parent == model_dir
    assert Path(report["model"]).exists()


def test_a_busy_media_streams_port_is_one_line_too(cli_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            web_port = free.getsockname()[1]
        serve = run_cli({**cli_env, "MEDIA_STREAM_PORT": str(port)}, "serve", "--port", str(web_port), timeout=60)
        streams = run_cli(cli_env, "streams", "--port", str(port), timeout=60)
    for result, hint in ((serve, "try MEDIA_STREAM_PORT="), (streams, "try --port ")):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"端口 {port} 已被占用" in lines[0] and hint in lines[0], result.stderr
