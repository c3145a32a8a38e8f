"""What a node does with the leader's `NodeAction`: check it against its role, act, answer.

The dispatch table has already taken the message from the leader of the term this node
follows, and only on a node. Here the node's own role decides what it will do: an action its
role names (`Role.actions`), with exactly the argument names that action takes, and nothing
else. A node with no role yet, an action the role does not name, a missing or an extra
argument: each is refused with one sentence before the role is called (`refusal`, pure).

The role's `act` then runs within `ACT_WITHIN` seconds; its answer must be text pairs of at
most `ACT_ANSWER_LIMIT` characters in all (`bounded`, pure), so that a role cannot send the
leader a log file. A failure is one sentence: the role's own `ClouddError`, or the exception's
first line when the role has a bug (never a traceback on the wire).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.base import ACT_ANSWER_LIMIT, ACT_WITHIN, Assignment, Provider, Role

Pairs = tuple[tuple[str, str], ...]


def acting_role(provider: Provider, role: str, roles: Sequence[str], action: str) -> Role:
    """Which of a node's roles does `action`: the first (its own role, then the others in
    order) that declares it; its own role when none does (whose refusal then names it)."""
    for name in (role, *(r for r in roles if r != role)):
        found = provider.role(name)
        if action in found.actions:
            return found
    return provider.role(role)


def refusal(role: Role | None, action: str, args: Sequence[tuple[str, str]], *,
            node: str) -> str | None:
    """Why `node` refuses to do `action` with `args` (None: it does it)."""
    if role is None:
        return f"{node} has no role yet, so no action {action!r}"
    takes = role.actions.get(action)
    if takes is None:
        known = ", ".join(sorted(role.actions)) or "none"
        return f"role {role.name} of {node} has no action {action!r} (actions: {known})"
    names = [name for name, _ in args]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"action {action!r} got argument {twice[0]!r} twice"
    missing, extra = sorted(set(takes) - set(names)), sorted(set(names) - set(takes))
    if missing or extra:
        wanted = ", ".join(takes) or "no arguments"
        what = (f"misses {', '.join(missing)}" if missing and not extra
                else f"has no argument {', '.join(extra)}" if extra and not missing
                else f"misses {', '.join(missing)} and has no argument {', '.join(extra)}")
        return f"action {action!r} of role {role.name} {what} (it takes {wanted})"
    return None


def bounded(answer: object, *, action: str, limit: int = ACT_ANSWER_LIMIT) -> Pairs:
    """The role's answer as sorted text pairs; PermanentError when it is not text or too big."""
    if not isinstance(answer, Mapping):
        raise PermanentError(f"action {action!r} answered {type(answer).__name__}, "
                             "not a mapping of text")
    pairs = []
    for key, value in answer.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise PermanentError(f"action {action!r} answered a field that is not text: "
                                 f"{key!r}")
        pairs.append((key, value))
    size = sum(len(k) + len(v) for k, v in pairs)
    if size > limit:
        raise PermanentError(f"action {action!r} answered {size} characters, more than the "
                             f"{limit} an answer may hold")
    return tuple(sorted(pairs))


def sentence(exc: BaseException) -> str:
    """One line saying why an action failed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ClouddError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def perform(role: Role, assignment: Assignment, action: str, args: Pairs, *,
                  within: float = ACT_WITHIN) -> Pairs:
    """Run the role's `act` (already checked by `refusal`); its bounded answer, or a
    ClouddError whose message is one sentence."""
    try:
        async with asyncio.timeout(within):
            answer = await role.act(assignment, action, dict(args))
    except TimeoutError:
        raise TemporaryError(f"action {action!r} did not finish within {within:g}s") from None
    except TemporaryError as exc:
        raise TemporaryError(sentence(exc), delay=exc.delay) from None
    except Exception as exc:  # a role's bug is one sentence on the wire, not a traceback
        raise PermanentError(f"action {action!r} failed: {sentence(exc)}") from None
    return bounded(answer, action=action)
