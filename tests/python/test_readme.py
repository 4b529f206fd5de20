"""The README's calls, run as written against the binary's embedded default.

The README shows a curl command and an openai-SDK program aimed at
127.0.0.1:8080; here the gateway runs on a free port, and only the address
is replaced.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, Gateway

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
DEFAULT_ADDR = "127.0.0.1:8080"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_openai_sdk_example_streams_with_usage(default_gateway: Gateway, tmp_path: Path):
    (program,) = blocks("python")
    assert DEFAULT_ADDR in program
    script = tmp_path / "readme_example.py"
    script.write_text(program.replace(DEFAULT_ADDR, default_gateway.addr), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *text, last = done.stdout.strip().splitlines()
    assert "".join(text).strip(), done.stdout
    match = re.fullmatch(r"(\d+) prompt \+ (\d+) completion tokens", last)
    assert match, done.stdout
    assert int(match.group(2)) == 32  # max_tokens=32; the sim's default natural length is 16..128


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples(default_gateway: Gateway):
    shell = [b for b in blocks("sh") if "curl" in b]
    assert len(shell) == 2, shell
    stream = subprocess.run(
        ["bash", "-c", shell[0].replace(DEFAULT_ADDR, default_gateway.addr)],
        capture_output=True, text=True, timeout=60,
    )
    assert stream.returncode == 0, stream.stderr
    events = [line for line in stream.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", stream.stdout
    usage = subprocess.run(
        ["bash", "-c", shell[1].replace(DEFAULT_ADDR, default_gateway.addr)],
        capture_output=True, text=True, timeout=60,
    )
    assert usage.returncode == 0, usage.stderr
    assert '"tenant":"demo"' in usage.stdout and '"reserved_usd":0.0' in usage.stdout, usage.stdout
