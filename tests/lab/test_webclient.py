"""The web client's arithmetic: seconds of failure and time until the site served again."""

from __future__ import annotations

from cloudd_lab.webclient import Client


def client(results: list[tuple[float, bool]]) -> Client:
    c = Client("http://192.0.2.1")
    c.results = results
    return c


def test_failed_seconds_run_from_each_failed_request_to_the_next_request() -> None:
    c = client([(0.0, True), (10.0, False), (12.0, False), (14.5, True), (14.6, True)])
    assert c.failed_seconds(5.0) == 4.5
    assert c.serving_again(5.0) == 9.5
    assert c.wrote_since(14.5) and not c.wrote_since(14.6)


def test_no_failure_means_serving_all_along_and_a_failure_at_the_end_means_not_yet() -> None:
    assert client([(1.0, True), (2.0, True)]).serving_again(0.0) == 0.0
    assert client([(1.0, True), (2.0, False)]).serving_again(0.0) is None
