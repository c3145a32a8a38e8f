"""What the database role says when MariaDB's initialisation fails: the line that tells why."""

from __future__ import annotations

import pytest

from cloudd.providers.web.database import telling_line

FAILED = """\
Installing MariaDB/MySQL system tables in '/var/lib/cloudd/n/mysql/data.init' ...
2026-12-03 12:20:01 0 [Warning] Can't create test file /var/lib/cloudd/n/mysql/data.init/x
2026-12-03 12:20:01 0 [ERROR] mariadbd: Can't create/write to file '/x/ibdata1' (Errcode: 13)

Installation of system tables failed!  Examine the logs in
/var/lib/cloudd/n/mysql/data.init for more information.

You can also submit it as a bug report at https://mariadb.org/jira
"""


@pytest.mark.parametrize(("output", "line"), [
    (FAILED, "2026-12-03 12:20:01 0 [ERROR] mariadbd: Can't create/write to file "
             "'/x/ibdata1' (Errcode: 13)"),
    (FAILED.replace("[ERROR]", "[Note]"),
     "Installation of system tables failed!  Examine the logs in"),
    ("something else\n\n", "something else"),
    ("", "no output"),
])
def test_the_line_that_tells_why(output: str, line: str) -> None:
    assert telling_line(output) == line
