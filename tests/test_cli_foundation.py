import json
import re
import subprocess
import sys

from conftest import assert_one_line_error


def test_version_and_help(scope_cli):
    from scopecli import __version__

    r = scope_cli("--version")
    assert r.code == 0 and __version__ in r.stdout
    r = scope_cli("--help")
    assert r.code == 0 and "layers" in r.stdout and "models" in r.stdout


def test_help_lists_commands_in_the_order_of_the_work(scope_cli):
    r = scope_cli("--help")
    assert r.code == 0
    # a command row: its name (after the panel border, if any), two or more spaces, its help
    listed = re.findall(r"^(?:│ )?\s{0,2}([a-z]+)\s{2,}\S", r.stdout, re.M)
    assert listed == ["render", "caricature", "collect", "decompose", "circuits", "effects", "faithfulness", "atlas", "show", "diff", "query", "export",
                      "serve", "pack", "info", "validate", "layers", "models", "demo"], r.stdout


def test_models_lists_torchvision_and_lite0(scope_cli):
    r = scope_cli("models", "--json")
    names = {row["name"] for row in json.loads(r.stdout)}
    assert {"resnet50", "googlenet", "alexnet", "vgg19", "inception_v3", "efficientnet_lite0"} <= names


def test_layers_table_and_json(scope_cli):
    r = scope_cli("layers", "resnet18", "--weights", "random")
    assert r.code == 0 and "layer4.1" in r.stdout and "*" in r.stdout
    r = scope_cli("layers", "googlenet", "--weights", "random", "--json")
    data = json.loads(r.stdout)
    defaults = [row["name"] for row in data["layers"] if row["default"]]
    assert "inception4c" in defaults
    row = next(row for row in data["layers"] if row["name"] == "inception5b")
    assert row["channels"] == 1024 and row["height"] == 7 and row["rf_stride"] == 32
    assert data["model"]["fingerprint"] and data["input_size"] == 224


def test_usage_errors_are_one_line(scope_cli):
    assert_one_line_error(scope_cli("layers"), 2, "missing argument")
    assert_one_line_error(scope_cli("layers", "resnet18", "--bogus"), 2, "no such option")


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "scopecli", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("scope ")
