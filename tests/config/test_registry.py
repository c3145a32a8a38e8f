"""The manifest folder: loaded, refused (previous generation kept), removed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cloudd.config.registry import Change, ManifestRegistry
from cloudd.providers.catalog import CATALOG
from tests.config.test_wire import WIRE_FORM

REPO = Path(__file__).resolve().parents[2]


def setup(tmp_path: Path) -> ManifestRegistry:
    shutil.copytree(REPO / "manifests" / "templates", tmp_path / "templates")
    (tmp_path / "agent.yaml").write_text("name: pm1\n")
    return ManifestRegistry(tmp_path, CATALOG, exclude=[tmp_path / "agent.yaml"])


def example(tmp_path: Path, name: str) -> str:
    """An example manifest whose secrets' files (under /etc/cloudd) are made here instead."""
    text = (REPO / "manifests" / name).read_text()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    for line in text.splitlines():
        if "/etc/cloudd/secrets/" in line:
            path = line.split("file: ")[1].rstrip("}")
            (secrets / Path(path).name).write_text(f"secret of {name}\n")
            text = text.replace(path, str(secrets / Path(path).name))
    return text


def bump(path: Path, text: str) -> None:
    """Rewrite and move the mtime forward, so that a same-size edit is still seen."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_loaded_refused_kept_replaced_removed(tmp_path: Path) -> None:
    reg = setup(tmp_path)
    assert reg.scan() == []
    web = tmp_path / "web.yaml"
    text = example(tmp_path, "web.yaml")
    web.write_text(text)
    [event] = reg.scan()
    assert (event.change, event.cloud and event.cloud.name) == (Change.LOADED, "shop")
    first = event.cloud
    assert reg.scan() == []  # unchanged: not reparsed, no event

    bump(web, text.replace("type: web", "type: wub"))
    [event] = reg.scan()
    assert event.change is Change.REFUSED
    assert event.cloud is first and reg.clouds == {"shop": first}
    assert str(event.problems[0]).startswith(f"{web}:5:7: type: unknown type 'wub'")

    bump(web, text.replace("app_port: 8080", "app_port: 8081"))
    [event] = reg.scan()
    assert event.change is Change.LOADED and event.cloud is not None
    assert event.cloud.settings.app_port == 8081  # type: ignore[attr-defined]

    web.unlink()
    [event] = reg.scan()
    assert event.change is Change.REMOVED and reg.clouds == {}


def test_touched_but_unchanged_file_gives_no_event(tmp_path: Path) -> None:
    reg = setup(tmp_path)
    web = tmp_path / "web.yaml"
    text = example(tmp_path, "web.yaml")
    web.write_text(text)
    reg.scan()
    bump(web, text)
    assert reg.scan() == []


def test_two_files_declaring_one_cloud(tmp_path: Path) -> None:
    reg = setup(tmp_path)
    text = example(tmp_path, "torque.yaml")
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    loaded, refused = reg.scan()
    assert loaded.change is Change.LOADED and refused.change is Change.REFUSED
    assert str(refused.problems[0]) == (f"{tmp_path}/b.yaml: name: cloud 'hpc' is already "
                                        f"declared by {tmp_path}/a.yaml")
    assert list(reg.clouds) == ["hpc"]


def test_missing_folder_is_empty(tmp_path: Path) -> None:
    assert ManifestRegistry(tmp_path / "nope", CATALOG).scan() == []


def test_an_edited_list_file_reloads_its_cloud(tmp_path: Path) -> None:
    reg = setup(tmp_path)
    shutil.copytree(REPO / "manifests" / "lists", tmp_path / "lists")
    (tmp_path / "slurm.yaml").write_text(example(tmp_path, "slurm.yaml"))
    [event] = reg.scan()
    assert event.cloud is not None and len(event.cloud.nodes) == 4
    addresses = tmp_path / "lists" / "slurm-compute.addresses"
    images = tmp_path / "lists" / "slurm-compute.images"
    bump(addresses, addresses.read_text() + "192.0.2.24\n")
    [event] = reg.scan()  # one file edited, the other not yet: refused, old kept
    assert event.change is Change.REFUSED and event.cloud is not None
    assert "lists 4 addresses but" in event.problems[0].message
    bump(images, images.read_text() + "/var/lib/cloudd/images/slurm-c4.qcow2\n")
    [event] = reg.scan()
    assert event.change is Change.LOADED and event.cloud is not None
    assert event.cloud.nodes[-1].name == "batch-compute-4"
    assert reg.scan() == []


def test_a_loaded_cloud_carries_the_text_it_was_built_from(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    from pathlib import Path

    from cloudd.config.registry import Change, ManifestRegistry
    from cloudd.providers.catalog import catalog

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "manifests" / "templates", tmp_path / "templates")
    (tmp_path / "web.yaml").write_text(example(tmp_path, "web.yaml"))
    (event,) = ManifestRegistry(tmp_path, catalog()).scan()
    assert event.change is Change.LOADED and event.cloud is not None
    assert event.cloud.text == (tmp_path / "web.yaml").read_text()




def test_a_file_removed_while_it_is_read_is_refused_then_removed(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # An operator (or a test) deletes a manifest between the registry reading its bytes and
    # checking its mode: one refusal naming the file, then the removal, never an exception
    # that would end the agent's manifest watcher.
    from cloudd.config import yamlsrc

    reg = setup(tmp_path)
    path = tmp_path / "lab.yaml"
    path.write_text(WIRE_FORM)
    path.chmod(0o600)
    [event] = reg.scan()
    assert event.change is Change.LOADED
    loaded = event.cloud
    bump(path, WIRE_FORM.replace("192.0.2.70", "192.0.2.71"))
    read = yamlsrc.read_bounded

    def read_then_gone(p: Path, **kw: int) -> bytes:
        raw = read(p, **kw)
        p.unlink()
        return raw

    monkeypatch.setattr(yamlsrc, "read_bounded", read_then_gone)
    [event] = reg.scan()
    assert event.change is Change.REFUSED and event.cloud is loaded
    assert [str(p) for p in event.problems] == [
        f"{path}: (document): no such file (removed while it was read)"]
    [event] = reg.scan()
    assert event.change is Change.REMOVED and reg.clouds == {}


def test_a_file_that_cannot_be_read_while_loading_is_refused(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A safety net: the loader turns the unreadable files it knows of into ConfigError; any
    # OSError it lets through is still one refusal, never the end of the agent's watcher.
    import cloudd.config.registry as registry

    reg = setup(tmp_path)
    (tmp_path / "web.yaml").write_text(example(tmp_path, "web.yaml"))

    def unreadable(path: Path, *a: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "list.txt"))

    monkeypatch.setattr(registry, "load_cloud", unreadable)
    [event] = reg.scan()
    assert event.change is Change.REFUSED and event.cloud is None
    assert [str(p) for p in event.problems] == [
        f"{tmp_path / 'list.txt'}: (document): cannot read: Permission denied"]
