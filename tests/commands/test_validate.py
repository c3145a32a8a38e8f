"""`cloudd-cli validate`: every kind of bad file gets exactly one placed line and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shared.manifests import SHOP

from cloudd.cli import main

REPO = Path(__file__).resolve().parents[2]

GOOD = SHOP

FILES_ROLE = GOOD.replace(
    "  server:\n    - {address: 192.0.2.176, image: /img/web1.qcow2}\n"
    "    - {address: 192.0.2.178, image: /img/web2.qcow2}\n",
    "  server:\n    addresses_file: servers.addresses\n    images_file: servers.images\n")


def run(capsys: pytest.CaptureFixture[str], *files: Path | str) -> tuple[int, list[str]]:
    code = main(["validate", *map(str, files)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out.splitlines()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "web.xml").write_text("<domain type='qemu'><name>${name}</name></domain>\n")
    return tmp_path


def write(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_good_manifest_prints_ok(capsys: pytest.CaptureFixture[str], folder: Path) -> None:
    path = write(folder, GOOD)
    assert run(capsys, path) == (0, [f"{path}: ok"])


def test_example_manifests_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted((REPO / "manifests").glob("*.yaml"))
    assert len(files) == 7
    code, lines = run(capsys, *files)
    assert (code, lines) == (0, [f"{f}: ok" for f in files])


# (name, manifest text, expected "line:column: field: message" after the file name)
CASES = [
    ("unknown type", GOOD.replace("type: web", "type: webz"),
     "4:7: type: unknown type 'webz' (known: appscale, slurm, torque, web)"),
    ("missing required role",
     GOOD.replace("  database: [{address: 192.0.2.177, image: /img/db.qcow2}]\n", ""),
     "8:1: roles.database: missing role 'database': type web needs exactly 1 database node"),
    ("duplicate address", GOOD.replace("192.0.2.178", "192.0.2.176"),
     "12:17: roles.server[1].address: address 192.0.2.176 is already used by node "
     "shop-server-1"),
    ("address not an IP", GOOD.replace("192.0.2.178", "192.0.2.300"),
     "12:17: roles.server[1].address: '192.0.2.300' is not an IP address"),
    ("address clashes with pool", GOOD.replace("192.0.2.175", "192.0.2.70"),
     "9:24: roles.balancer[0].address: address 192.0.2.70 is already used by pool host pm1"),
    ("unknown top-level field", GOOD + "colour: blue\n", "15:1: colour: unknown field"),
    ("secret written inline", GOOD.replace("settings: {app_port: 8080}",
                                           "settings: {app_port: 8080, password: hunter2}"),
     "14:38: settings.password: looks like a secret written inline ('password'); put it in "
     "a file and reference it as secrets: {NAME: {file: PATH}}"),
    ("secret inline under secrets", GOOD + "secrets:\n  db: hunter2\n",
     "16:7: secrets.db: a secret written inline; put it in a file and reference it as "
     "secrets: {NAME: {file: PATH}}"),
    ("secret ref not declared", GOOD.replace("{app_port: 8080}",
                                             "{database_password_ref: db}"),
     "14:35: settings.database_password_ref: names secret 'db', which is not declared under "
     "secrets (declared: none)"),
    ("too many of an exactly-one role",
     GOOD.replace("  database: [{address: 192.0.2.177, image: /img/db.qcow2}]",
                  "  database: [{address: 192.0.2.177, image: /img/db.qcow2},"
                  " {address: 192.0.2.179, image: /img/db2.qcow2}]"),
     "13:13: roles.database: has 2 nodes; type web needs exactly 1"),
    ("unknown role", GOOD.replace("  database:", "  cache: [{address: 192.0.2.9, image: /i}]\n"
                                                "  database:"),
     "13:3: roles.cache: unknown role 'cache' for type web (roles: database, server, "
     "balancer)"),
    ("bad setting type", GOOD.replace("app_port: 8080", "app_port: http"),
     "14:22: settings.app_port: should be a valid integer, not 'http'"),
    ("host pin not in pool", GOOD.replace("image: /img/db.qcow2}", "image: /img/db.qcow2, "
                                                                   "host: pm9}"),
     "13:65: roles.database[0].host: names 'pm9', which is not a pool host (pool: pm1)"),
    ("missing template", GOOD.replace("web.xml", "nope.xml"),
     "5:18: domain_template: no such file: '{folder}/nope.xml'"),
    ("missing image list file", FILES_ROLE.replace("servers.images", "missing.images"),
     "12:18: roles.server.images_file: '{folder}/missing.images': no such file"),
    ("lists of different lengths", FILES_ROLE,
     "11:5: roles.server: servers.addresses lists 3 addresses but servers.images lists 2 "
     "images; line i of one pairs with line i of the other"),
    ("non-YAML file", "roles: [unclosed\n  - {\n",
     "2:5: (document): not valid YAML: expected ',' or ']', but got '{'"),
    ("not a mapping", "- just\n- a list\n",
     "1:1: (document): a manifest must be a YAML mapping"),
    ("empty file", "\n   \n", "(document): file is empty"),
    ("anchors bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c]\n",
     "1:4: (document): YAML anchors and aliases (&name, *name) are not allowed"),
    ("duplicate key", GOOD + "name: other\n", "15:1: (document): duplicate key 'name'"),
    ("wrong kind", GOOD.replace("kind: Cloud", "kind: Agent"),
     "2:7: kind: should be 'Cloud', not 'Agent'"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_gives_one_placed_line(capsys: pytest.CaptureFixture[str], folder: Path,
                                           text: str, expected: str) -> None:
    (folder / "servers.addresses").write_text("192.0.2.176\n# comment\n192.0.2.178\n192.0.2.180\n")
    (folder / "servers.images").write_text("/img/web1.qcow2\n\n/img/web2.qcow2\n")
    path = write(folder, text)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, lines = run(capsys, path)
    expected = expected.replace("{folder}", str(folder))
    sep = " " if expected.startswith("(") else ""
    assert (code, lines) == (1, [f"{path}:{sep}{expected}"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_bad_address_in_list_file_points_into_that_file(capsys: pytest.CaptureFixture[str],
                                                       folder: Path) -> None:
    (folder / "servers.addresses").write_text("192.0.2.176\n192.0.2.1789\n")
    (folder / "servers.images").write_text("/img/web1.qcow2\n/img/web2.qcow2\n")
    code, lines = run(capsys, write(folder, FILES_ROLE))
    assert (code, lines) == (1, [f"{folder}/servers.addresses:2:1: address: '192.0.2.1789' "
                                 "is not an IP address"])


def test_ten_megabyte_file_is_refused_by_size(capsys: pytest.CaptureFixture[str],
                                             folder: Path) -> None:
    path = folder / "big.yaml"
    with open(path, "wb") as f:  # not even YAML: it must never be parsed
        f.write(b"\x00" * (10 * 1024 * 1024))
    code, lines = run(capsys, path)
    assert (code, lines) == (1, [f"{path}: (document): file is 10485760 bytes; the limit is "
                                 "1048576 bytes"])


def test_nonexistent_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, tmp_path / "nope.yaml") == (
        1, [f"{tmp_path}/nope.yaml: (document): no such file"])


def test_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, tmp_path) == (1, [f"{tmp_path}: (document): is a directory, not a file"])


def test_binary_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    path.write_bytes(b"QFI\xfb\x00\x00\x00\x03")
    assert run(capsys, path) == (
        1, [f"{path}: (document): not a UTF-8 text file (byte 3 is invalid)"])


def test_one_bad_file_among_good_ones_fails_the_run(capsys: pytest.CaptureFixture[str],
                                                   folder: Path) -> None:
    good = write(folder, GOOD, "good.yaml")
    code, lines = run(capsys, good, folder / "missing.yaml")
    assert code == 1
    assert lines == [f"{good}: ok", f"{folder}/missing.yaml: (document): no such file"]


def test_show_prints_each_node(capsys: pytest.CaptureFixture[str], folder: Path) -> None:
    path = write(folder, GOOD)
    assert main(["validate", "--show", str(path)]) == 0
    out = capsys.readouterr().out
    for name, address in [("shop-balancer-1", "192.0.2.175"), ("shop-server-2", "192.0.2.178"),
                          ("shop-database-1", "192.0.2.177")]:
        assert any(name in line and address in line for line in out.splitlines())


def test_show_says_which_roles_follow_their_queue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--show", str(REPO / "manifests" / "slurm-elastic.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("    compute: elastic, 1 to 8 of its 8 candidates below in use (idle_after 300 s, "
            "cooldown 120 s)") in out
    assert sum(1 for line in out if "burst-compute-" in line) == 8


def test_console_script_runs_without_traceback(folder: Path) -> None:
    bad = write(folder, GOOD.replace("type: web", "type: webz"))
    proc = subprocess.run([sys.executable, "-m", "cloudd.cli", "validate", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert proc.stdout.startswith(f"{bad}:4:7: type: unknown type 'webz'")
