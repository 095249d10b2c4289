"""The CLI contract: every command has help, `fopt --help` stays light, errors are one line."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fopt import __version__
from fopt.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from fopt.cli import main; sys.argv=['fopt','--help'];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','onnx','onnxruntime','tensorrt','matplotlib') if m in sys.modules];"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_example(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    assert "Example" in res.output, f"`fopt {name} --help` has no Example"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_is_in_the_readme(name):
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"fopt {name}\b", readme), f"README does not mention `fopt {name}`"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:10]
    text = "\n".join(head)
    assert "make demo" in text and "make test" in text


def test_python_dash_m_fopt():
    out = subprocess.run([sys.executable, "-m", "fopt", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    # An unknown artifact: every command that takes one must fail the same way.
    missing = tmp_path / "missing.onnx"
    res = subprocess.run([sys.executable, "-m", "fopt", "eval", str(missing), "--data", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
