"""The `two_host` setting of a manifest: exactly two pool hosts, each with its fence command;
anything else is refused with one precise message. A node's view carries none of it."""

from __future__ import annotations

import pytest

from cloudd.config.manifest import load_cloud_text
from cloudd.config.portable import Recipient, text_for
from cloudd.config.sources import Origin
from cloudd.daemon.member.cloudmember import roster_of
from cloudd.election.config import TwoHost
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

FENCE1 = "[ipmitool, -H, 10.0.0.1, power, 'off']"
FENCE2 = "[ipmitool, -H, 10.0.0.2, power, 'off']"


def text(pool: str, two_host: str = "two_host: {fence_delay: 10, wait_for_all: 60}\n") -> str:
    return f"""\
apiVersion: cloudd/v1
kind: Cloud
name: pair
type: web
pool:
{pool}{two_host}roles:
  balancer: [{{address: 192.0.2.175, image: /img/lb.qcow2}}]
  server: [{{address: 192.0.2.176, image: /img/web1.qcow2}}]
  database: [{{address: 192.0.2.177, image: /img/db.qcow2}}]
settings: {{app_port: 8080}}
self_contained: true
domain_template_text: "<domain/>"
"""


TWO = (f"  - {{name: pm1, address: 192.0.2.70, fence: {FENCE1}}}\n"
       f"  - {{name: pm2, address: 192.0.2.71, fence: {FENCE2}}}\n")


def refusal(t: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_cloud_text(t, CATALOG, origin=Origin.WIRE)
    return [f"{p.field}: {p.message}" for p in e.value.problems]


def test_two_hosts_with_fences_make_a_two_host_pool() -> None:
    cloud = load_cloud_text(text(TWO), CATALOG)
    assert cloud.two_host == TwoHost(fence_delay=10.0, wait_for_all=60.0)
    roster = roster_of(cloud)
    assert roster.two_host == TwoHost(fence_delay=10.0, wait_for_all=60.0)
    assert roster.quorum == 2
    defaults = load_cloud_text(text(TWO, "two_host: {}\n"), CATALOG)
    assert defaults.two_host == TwoHost(fence_delay=15.0, wait_for_all=None)
    forever = load_cloud_text(text(TWO, "two_host: {wait_for_all: null}\n"), CATALOG)
    assert forever.two_host is not None and forever.two_host.wait_for_all is None
    assert load_cloud_text(text(TWO, ""), CATALOG).two_host is None
    assert roster_of(load_cloud_text(text(TWO, ""), CATALOG)).two_host is None


@pytest.mark.parametrize("count", [1, 3])
def test_any_other_number_of_hosts_is_refused(count: int) -> None:
    pool = "".join(f"  - {{name: pm{i}, address: 192.0.2.{70 + i}, fence: [poweroff, pm{i}]}}\n"
                   for i in range(1, count + 1))
    assert refusal(text(pool)) == [
        f"two_host: a two-host pool has exactly two pool hosts, and this pool lists {count}"]


def test_each_host_needs_its_fence_command() -> None:
    pool = (f"  - {{name: pm1, address: 192.0.2.70, fence: {FENCE1}}}\n"
            "  - {name: pm2, address: 192.0.2.71}\n")
    assert refusal(text(pool)) == [
        "pool[1].fence: is required in a two-host pool: the survivor acts only after "
        "fencing the other"]


@pytest.mark.parametrize(("setting", "why"), [
    ("{fence_delay: -1}", "two_host.fence_delay"),
    ("{wait_for_all: 0}", "two_host.wait_for_all"),
    ("{delay: 3}", "two_host.delay"),
])
def test_bad_settings_are_refused(setting: str, why: str) -> None:
    problems = refusal(text(TWO, f"two_host: {setting}\n"))
    assert len(problems) == 1 and problems[0].startswith(why), problems


def test_a_nodes_view_carries_no_two_host_setting() -> None:
    cloud = load_cloud_text(text(TWO), CATALOG)
    view = load_cloud_text(text_for(cloud, Recipient.NODE), CATALOG, with_template=False)
    assert view.two_host is None and all(h.fence == () for h in view.pool)
    assert load_cloud_text(text_for(cloud, Recipient.HOST), CATALOG).two_host == cloud.two_host
