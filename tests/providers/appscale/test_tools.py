"""The AppScale tools' commands: what runs, how (no terminal, bounded), and what status says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloudd.providers.appscale import tools as t

GOOD_FILE = ("ips_layout:\n- roles: [master, database, zookeeper]\n  nodes: 192.0.2.30\n"
             "keyname: as1\ngroup: as1\nadmin_user: a@example.com\nadmin_pass: secret1\n")

# `appscale status --verbose` as 3.8.1 prints it (tabulate's plain table), colours included.
STATUS = """\
----------------------------------------------------------------------------
PUBLIC IP    PRIVATE IP    I/L*    CPU%xCORES      MEMORY%  DISK%                                 LOADAVG        ROLES
192.0.2.30   192.0.2.30    +/+     12.5x2             41.3  "/" => 22.1                           0.4 0.3 0.2    compute database db_master load_balancer shadow zookeeper
192.0.2.33   192.0.2.33    +/-     3.0x2              20.0  "/" => 10.0 "/opt/appscale" => 5.0    0.1 0.1 0.1    compute memcache
192.0.2.35   192.0.2.35    -/-     0.0x1               1.0  "/" => 1.0                            0.0 0.0 0.0
?            192.0.2.34    ?       ?               ?        ?                                     ?              ?
* I/L means 'Is node Initialized'/'Is node Loaded'
\x1b[31m
There are 1 nodes that didn't report it's state\x1b[0m
Available stats for 3 nodes: 2 are initialized, 1 are loaded, 0 of 1 services are started
"""  # noqa: E501


def settings(tmp_path: Path, appscale: Path | None = None, **kw: object) -> t.ToolsSettings:
    return t.ToolsSettings(appscale=appscale or tmp_path / "appscale", folder=tmp_path / "dep",
                           home=tmp_path / "home", **kw)  # type: ignore[arg-type]


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "appscale"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    (tmp_path / "dep").mkdir(exist_ok=True)
    (tmp_path / "dep" / "AppScalefile").write_text(GOOD_FILE)
    return path


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# ---- pure ---------------------------------------------------------------------------------

def test_each_verb_is_one_command_line_in_the_deployment_folder(tmp_path: Path) -> None:
    s = settings(tmp_path, prefix=("nsenter", "--net=/x", "--"))
    argv = {v: t.plan(v, s).argv for v in t.Verb}
    exe = str(tmp_path / "appscale")
    assert argv == {t.Verb.UP: ("nsenter", "--net=/x", "--", exe, "up"),
                    t.Verb.STATUS: ("nsenter", "--net=/x", "--", exe, "status", "--verbose"),
                    t.Verb.DOWN: ("nsenter", "--net=/x", "--", exe, "down")}
    up = t.plan(t.Verb.UP, s)
    assert up.cwd == tmp_path / "dep" and up.within == s.up_within and up.must_succeed


def test_the_environment_is_fixed_not_inherited(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent")
    env = t.plan(t.Verb.STATUS, settings(tmp_path, env={"EXTRA": "1"})).env
    assert env["HOME"] == str(tmp_path / "home")
    assert env["ANSI_COLORS_DISABLED"] == "1" and env["EXTRA"] == "1"
    assert "SSH_AUTH_SOCK" not in env


def test_a_respawn_is_down_then_up_and_only_up_must_succeed(tmp_path: Path) -> None:
    seq = t.respawn_plan(settings(tmp_path))
    assert [(c.verb, c.must_succeed) for c in seq] == [(t.Verb.DOWN, False), (t.Verb.UP, True)]


@pytest.mark.parametrize(("text", "why"), [
    ("keyname: a\n", "lacks group"),
    ("group: a\nadmin_user: u\nadmin_pass: p\n", "lacks keyname"),
    ("keyname: a\ngroup: a\n", "ask for the administrator's account"),
    ("keyname: a\ngroup: a\nadmin_user: u\n", "ask for the administrator's account"),
    ("- a\n", "not a mapping"),
    ("a: [\n", "not YAML"),
])
def test_an_appscalefile_that_would_make_up_prompt_is_named(text: str, why: str) -> None:
    gap = t.interactive_gaps(text)
    assert gap is not None and why in gap


@pytest.mark.parametrize("text", [GOOD_FILE, "keyname: a\ngroup: a\ntest: true\n"])
def test_an_appscalefile_that_runs_without_a_person(text: str) -> None:
    assert t.interactive_gaps(text) is None


def test_status_rows_become_node_facts() -> None:
    report = t.parse_status(STATUS)
    assert report.summary is t.Summary.PARTIAL
    assert [(n.address, n.state) for n in report.nodes] == [
        ("192.0.2.30", t.NodeState.LOADED), ("192.0.2.33", t.NodeState.INITIALIZED),
        ("192.0.2.35", t.NodeState.STARTING), ("192.0.2.34", t.NodeState.UNREPORTED)]
    head = report.node("192.0.2.30")
    assert head is not None and "shadow" in head.roles and "zookeeper" in head.roles
    assert report.nodes[1].roles == ("compute", "memcache")
    assert report.nodes[2].roles == () and report.nodes[3].roles == ()
    assert report.node("192.0.2.99") is None


@pytest.mark.parametrize(("line", "summary"), [
    ("AppScale is up. All 3 nodes are loaded", t.Summary.UP),
    ("AppScale is starting: 1 of 3 nodes are initialized, ...", t.Summary.STARTING),
    ("AppScale deployment is probably down", t.Summary.UNKNOWN),
])
def test_the_summary_line(line: str, summary: t.Summary) -> None:
    assert t.parse_status(f"---\n\x1b[32m{line}\x1b[0m\n").summary is summary


def test_status_ignores_what_is_not_a_row() -> None:
    noise = "Log in to your head node: ssh -i k root@192.0.2.30\n1.2.3.4\n? ? ?\n"
    assert t.parse_status(noise).nodes == ()


# ---- the executable -----------------------------------------------------------------------

def test_a_missing_executable_is_refused_by_its_path(tmp_path: Path) -> None:
    with pytest.raises(t.ToolsRefused, match=re.escape(f"{tmp_path / 'nope'} does not exist")):
        t.check_executable(tmp_path / "nope")


def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "appscale"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    # Even for root, X_OK needs an x bit for someone.
    with pytest.raises(t.ToolsRefused, match=re.escape(f"{path} is not executable")):
        t.check_executable(path)


def test_a_folder_is_not_the_executable(tmp_path: Path) -> None:
    with pytest.raises(t.ToolsRefused, match=re.escape(f"{tmp_path} is not a file")):
        t.check_executable(tmp_path)


async def test_up_refuses_an_appscalefile_that_would_prompt(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo ran >> \"$HOME/ran\"\n")
    (tmp_path / "dep" / "AppScalefile").write_text("keyname: a\ngroup: a\n")
    with pytest.raises(t.ToolsRefused, match=r"AppScalefile: .*administrator"):
        await t.up(settings(tmp_path, exe))
    assert not (tmp_path / "home" / "ran").exists()


# ---- running (a small shell script as the tools) ------------------------------------------

async def test_a_run_has_no_terminal_no_stdin_and_the_fixed_environment(tmp_path: Path) -> None:
    exe = script(tmp_path, 'tty; read x || echo "stdin: eof"; pwd; env | sort\n')
    (tmp_path / "home").mkdir()
    result = await t.run(t.plan(t.Verb.STATUS, settings(tmp_path, exe)))
    lines = result.output.splitlines()
    assert lines[0] == "not a tty" and lines[1] == "stdin: eof"
    assert lines[2] == str(tmp_path / "dep")
    names = {ln.split("=", 1)[0] for ln in lines[3:]}
    assert names - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "HOME", "PATH", "LANG", "ANSI_COLORS_DISABLED", "TERM", "PYTHONUNBUFFERED"}


async def test_a_failed_run_raises_with_its_last_line(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo working\necho 'AppScale is already running.' >&2\nexit 1\n")
    with pytest.raises(t.ToolsFailed, match=re.escape(
            "`appscale up` exited with 1: AppScale is already running.")) as caught:
        await t.up(settings(tmp_path, exe))
    assert caught.value.result.code == 1 and "working" in caught.value.result.output


async def test_a_crash_is_named_by_its_message_not_the_crash_logs_place(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo 'Need to specify one master node.'\necho\n"
                           "echo 'A log with more information is available at'\n"
                           "echo '/root/.appscale/log-1234.'\nexit 1\n")
    with pytest.raises(t.ToolsFailed, match=r"exited with 1: Need to specify one master node"):
        await t.up(settings(tmp_path, exe))


async def test_a_run_past_its_bound_is_killed_with_its_children(tmp_path: Path) -> None:
    exe = script(tmp_path, "sleep 300 &\necho $! > \"$HOME/child\"\nwait\n")
    (tmp_path / "home").mkdir()
    with pytest.raises(t.ToolsFailed, match=re.escape("ran past its bound of 0.5s")) as caught:
        await t.down(settings(tmp_path, exe, down_within=0.5))
    assert caught.value.result.code is None
    assert gone(int((tmp_path / "home" / "child").read_text()))


async def test_the_output_kept_is_bounded_to_its_end(tmp_path: Path) -> None:
    exe = script(tmp_path, "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done\n"
                           "echo the end\n")
    result = await t.run(t.plan(t.Verb.STATUS, settings(tmp_path, exe)), output_limit=2048)
    assert len(result.output) <= 2048 and result.dropped > 0
    assert result.output.endswith("the end\n") and result.last_line() == "the end"


async def test_a_respawns_failed_down_is_kept_and_up_still_runs(tmp_path: Path) -> None:
    exe = script(tmp_path, 'echo "$1" >> "$HOME/seq"\n[ "$1" = up ]\n')
    (tmp_path / "home").mkdir()
    results = await t.respawn(settings(tmp_path, exe))
    assert [(r.command.verb, r.ok) for r in results] == [(t.Verb.DOWN, False), (t.Verb.UP, True)]
    assert (tmp_path / "home" / "seq").read_text() == "down\nup\n"


async def test_status_parses_what_the_tools_print(tmp_path: Path) -> None:
    (tmp_path / "status.txt").write_text(STATUS)
    exe = script(tmp_path, f"cat {tmp_path / 'status.txt'}\n")
    report = await t.status(settings(tmp_path, exe))
    assert len(report.nodes) == 4 and report.summary is t.Summary.PARTIAL
