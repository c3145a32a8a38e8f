from cloudd.errors import ConfigError, PermanentError, Problem, TemporaryError


def test_problem_renders_file_line_column_field() -> None:
    p = Problem(file="m.yaml", line=3, column=5, field="roles.server[1].address",
                message="'x' is not an IP address")
    assert str(p) == "m.yaml:3:5: roles.server[1].address: 'x' is not an IP address"


def test_problem_without_position() -> None:
    problem = Problem("m.yaml", None, None, "", "file is empty")
    assert str(problem) == "m.yaml: (document): file is empty"


def test_config_error_is_permanent_and_lists_every_problem() -> None:
    e = ConfigError([Problem("a", 1, 1, "x", "bad"), Problem("a", 2, 1, "y", "worse")])
    assert isinstance(e, PermanentError)
    assert str(e).splitlines() == ["a:1:1: x: bad", "a:2:1: y: worse"]


def test_temporary_error_carries_delay() -> None:
    assert TemporaryError("later", delay=2.5).delay == 2.5
