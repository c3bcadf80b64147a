"""`dalle serve`: start-up mistakes are one-line errors; a real server process answers and stops on Ctrl-C or kill."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from dalle_zero.cli.main import main
from tests.factories.pipelines import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "model"
    tiny_pipeline(clip=True).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "{tmp}/absent"], "--model: model folder not found"),
        (["--model", "{tmp}"], "no pipeline.json"),
        (["--model", "{model}", "--port", "70000"], "--port must be in [0, 65535]"),
        (["--model", "{model}", "--max-images", "8", "--max-candidates", "4"], "--max-candidates (4) must be >="),
        (["--model", "{model}", "--threads", "0"], "--threads must be >= 1"),
        (["--model", "{model}", "--int8", "--device", "cuda"], "--int8"),
        (["--model", "{model}", "--token", "short"], "the token must have at least 16 characters"),
        (["--model", "{model}", "--token-file", "{tmp}/absent"], "--token-file: no such file"),
        (["--model", "{model}", "--allowed-hosts", "a.example,http://b.example"], "allowed host 'http://b.example'"),
        (["--model", "{model}", "--max-connections", "0"], "--max-connections must be >= 1"),
        (["--model", "{model}", "--max-queue", "0"], "--max-queue must be >= 1"),
        (["--model", "{model}", "--queue-timeout", "nan"], "--queue-timeout must be a number of seconds > 0"),
        (["--model", "{model}", "--request-timeout", "0"], "--request-timeout must be a number of seconds > 0"),
    ],
)
def test_start_up_mistakes_are_one_line_errors(model_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, model=model_dir) for a in argv]
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and message in err and "\n" not in err


def test_a_port_in_use_is_a_one_line_error(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dalle: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_the_command_prints_its_url_serves_and_stops_cleanly(model_dir, stop):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dalle_zero.cli.main", "serve", "--model", str(model_dir), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving on "):
                break
        assert lines and lines[-1].startswith("serving on http://127.0.0.1:"), "".join(lines)
        assert "16 px images, 4x4 tokens, with a CLIP reranker" in lines[0]
        url = lines[-1].split()[2]
        with urllib.request.urlopen(url + "health", timeout=30) as response:
            assert json.load(response)["model"] == "model"
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
    assert "GET /health" in err  # one log line per request


def test_the_command_takes_a_token_file_and_allowed_hosts(model_dir, tmp_path):
    token = "a-token-from-a-file-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dalle_zero.cli.main", "serve", "--model", str(model_dir), "--port", "0"]
    cmd += ["--token-file", str(tmp_path / "token"), "--allowed-hosts", "demo.example"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving on "):
                break
        url = lines[-1].split()[2]
        assert f"open {url}#token=<token>" in lines[-2] and token not in "".join(lines)

        def health(**headers: str) -> int:
            try:
                with urllib.request.urlopen(urllib.request.Request(url + "health", headers=headers), timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert health() == 401
        assert health(Authorization=f"Bearer {token}") == 200
        assert health(Authorization=f"Bearer {token}", Host="demo.example") == 200
        assert health(Authorization=f"Bearer {token}", Host="rebind.evil.example") == 403
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
