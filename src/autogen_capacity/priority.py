"""Priority classes and the wait line that serves them: critical work first, nothing starved, sheddable work
dropped first under overload.

Pure data structures: nothing here sleeps, locks or reads a clock; callers pass ``now`` (loop seconds).

The classes are Google SRE's criticality classes, highest first: ``"critical"``, ``"default"``,
``"sheddable"``. A :class:`WaitLine` serves the oldest waiter of the highest *effective* class present. A
waiter's effective class is its own class lifted one class per ``aging_s`` seconds waited, up to
``"critical"``; waiters of the same effective class are served oldest first, whatever their own class.

**The aging bound.** A waiter of class *c* that arrived at *t0* has the top effective class from
``t0 + lift(c) * aging_s`` on, where ``lift`` is 0 for critical, 1 for default and 2 for sheddable. From then
on only waiters that arrived before *t0* (and are still waiting) are served ahead of it: a newcomer of any
class arrives later, so it loses the tie. A sheddable waiter is therefore passed over by newcomers for at most
``2 * aging_s`` seconds (a default one for ``aging_s``), and after that it waits only for the waiters that
were already in the line when it came.

**Shedding.** When the line holds ``max_queue`` waiters, :meth:`WaitLine.shed_for` makes room for a newcomer
by dropping the youngest waiter of the lowest class *below* the newcomer's own class (classes as declared, not
as aged: criticality decides who is shed, aging only decides the order of service). A newcomer with no lower
class to displace is refused with :class:`LineFull`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Hashable, Iterator
from typing import Generic, Literal, TypeVar, get_args

from .exceptions import QueueFull

__all__ = [
    "DEFAULT_AGING_S",
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "TOP_RANK",
    "LineFull",
    "Priority",
    "WaitLine",
    "effective_rank",
    "rank",
]

Priority = Literal["critical", "default", "sheddable"]
"""How much a caller's work matters under overload (Google SRE's criticality classes)."""

PRIORITIES: tuple[Priority, ...] = get_args(Priority)
"""Every class, highest first."""

DEFAULT_PRIORITY: Priority = "default"

DEFAULT_AGING_S = 10.0
"""Seconds of waiting that lift a waiter one class: a sheddable waiter competes as critical after 20 s."""

_RANKS: dict[Priority, int] = {"sheddable": 0, "default": 1, "critical": 2}
_TOP = 2
TOP_RANK = _TOP
"""The rank of ``"critical"`` (:func:`rank`): a class's lift to the top is ``TOP_RANK - rank(class)``."""

T = TypeVar("T", bound=Hashable)


def rank(priority: Priority) -> int:
    """The class as a number: 0 sheddable, 1 default, 2 critical.

    Raises:
        ValueError: ``priority`` is not one of :data:`PRIORITIES`.
    """
    try:
        return _RANKS[priority]
    except KeyError:
        msg = f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}"
        raise ValueError(msg) from None


def effective_rank(priority: Priority, waited_s: float, aging_s: float) -> int:
    """:func:`rank` lifted by one per whole ``aging_s`` waited, at most critical's (2).

    ``aging_s=math.inf`` turns aging off; a negative wait counts as none.
    """
    base = rank(priority)
    if waited_s <= 0 or base == _TOP:
        return base
    return min(_TOP, base + int(min(waited_s / aging_s, _TOP)))


class LineFull(QueueFull):
    """The line holds ``max_queue`` waiters and none of a lower class than the newcomer's: it is refused.

    Args:
        priority: The refused newcomer's class.
        max_queue: The bound the line is at.
    """

    def __init__(self, priority: Priority, max_queue: int) -> None:
        lower = "" if priority == "sheddable" else f" and none below {priority!r} to shed"
        super().__init__(f"{max_queue} callers already wait{lower}: a {priority!r} caller is refused")
        self.priority: Priority = priority
        self.max_queue = max_queue


class _Entry(Generic[T]):
    __slots__ = ("item", "order", "seq", "since")

    def __init__(self, item: T, since: float, seq: int) -> None:
        self.item = item
        self.since = since
        self.seq = seq
        """Ties between equal arrivals: a newcomer's grows, a put-back one's shrinks (it goes ahead)."""
        self.order = (since, seq)


_order = operator.attrgetter("order")
"""An entry's place in its class's list (in C: bisections call it per comparison)."""


class _Class(Generic[T]):
    """One class's waiters in a list kept sorted by arrival, oldest first.

    Inserting and removing in the middle move the list's tail (a C ``memmove``, cheap at any realistic line
    length); finding an entry and counting the waiters ahead of someone are bisections.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[_Entry[T]] = []

    def head(self) -> _Entry[T] | None:
        return self.entries[0] if self.entries else None

    def tail(self) -> _Entry[T] | None:
        return self.entries[-1] if self.entries else None

    def add(self, entry: _Entry[T]) -> None:
        bisect.insort(self.entries, entry, key=_order)

    def index(self, entry: _Entry[T]) -> int:
        """Where ``entry`` is: how many of the class arrived before it."""
        return bisect.bisect_left(self.entries, entry.order, key=_order)

    def take(self, entry: _Entry[T]) -> None:
        """``entry`` left (served, shed or removed)."""
        del self.entries[self.index(entry)]


class WaitLine(Generic[T]):
    """Waiters by class, served highest effective class first and oldest first within it.

    Replaces a FIFO deque of waiters: with every waiter of one class it *is* a FIFO. Items must be hashable
    and are held at most once. ``push``, ``pop_next``, ``push_front``, ``shed_for``, ``remove`` and
    :meth:`position` find their place by bisection, O(log n) comparisons (plus a C ``memmove`` of the class's
    list); iteration sorts the line, O(n log n).

    Args:
        aging_s: Seconds of waiting that lift a waiter one class (``math.inf``: no aging, strict classes).

    Raises:
        ValueError: ``aging_s`` is not positive.

    Examples:
        >>> line: WaitLine[str] = WaitLine(aging_s=10)
        >>> line.push("batch", "sheddable", now=0)
        >>> line.push("user", "critical", now=5)
        >>> line.pop_next(now=6)
        'user'
        >>> line.push("user2", "critical", now=7)
        >>> line.pop_next(now=21)  # "batch" waited 21 s: lifted two classes, and it is older
        'batch'

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_back", "_classes", "_entries", "_front", "_now", "aging_s")

    def __init__(self, aging_s: float = DEFAULT_AGING_S) -> None:
        if not aging_s > 0:
            msg = f"aging_s must be positive, got {aging_s!r}"
            raise ValueError(msg)
        self.aging_s = aging_s
        self._classes: tuple[_Class[T], _Class[T], _Class[T]] = (_Class(), _Class(), _Class())
        """By :func:`rank`: sheddable, default, critical."""
        self._entries: dict[T, tuple[int, _Entry[T]]] = {}
        self._now = -math.inf
        self._back = itertools.count(0)
        self._front = itertools.count(-1, -1)
        """The latest ``now`` the line was told: the time :meth:`__iter__` orders by."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return item in self._entries

    def __iter__(self) -> Iterator[T]:
        """The waiters in the order they would be served if nobody came or left, as of the latest ``now``."""
        return iter(self.in_order(self._now))

    def __repr__(self) -> str:
        counts = ", ".join(f"{p}={len(self._classes[_RANKS[p]].entries)}" for p in PRIORITIES)
        return f"WaitLine({counts}, aging_s={self.aging_s})"

    def _tick(self, now: float) -> None:
        self._now = max(self._now, now)

    def _key(self, rank_: int, entry: _Entry[T], now: float) -> tuple[int, float, int, int]:
        """Greater is served first: effective class, then the older, then the higher own class, then the
        earlier in its class's order."""
        lifted = effective_rank(PRIORITIES[_TOP - rank_], now - entry.since, self.aging_s)
        return (lifted, -entry.since, rank_, -entry.seq)

    def _add(self, item: T, priority: Priority, since: float, *, front: bool) -> None:
        if item in self._entries:
            msg = f"{item!r} already waits in this line"
            raise ValueError(msg)
        r = rank(priority)
        entry = _Entry(item, since, next(self._front if front else self._back))
        self._classes[r].add(entry)
        self._entries[item] = (r, entry)

    def push(self, item: T, priority: Priority, now: float) -> None:
        """Queue ``item`` behind every waiter of its class that arrived before ``now``.

        Raises:
            ValueError: ``item`` already waits here, or ``priority`` is not a class.
        """
        self._tick(now)
        self._add(item, priority, now, front=False)

    def push_front(self, item: T, priority: Priority, since: float) -> None:
        """Put ``item`` back at its place: it was woken as the head of its class but lost the race for the
        slot, and waits on. ``since`` is when it first arrived: it goes ahead of every waiter of its class that
        arrived at or after ``since`` (the head, when it was the head), and keeps aging from ``since``.

        Raises:
            ValueError: ``item`` already waits here, or ``priority`` is not a class.
        """
        self._add(item, priority, since, front=True)

    def _best(self, now: float) -> tuple[int, _Entry[T]] | None:
        best: tuple[int, _Entry[T]] | None = None
        best_key: tuple[int, float, int, int] | None = None
        for r in (2, 1, 0):
            head = self._classes[r].head()
            if head is None:
                continue
            key = self._key(r, head, now)
            if best_key is None or key > best_key:
                best, best_key = (r, head), key
        return best

    def peek(self, now: float) -> T | None:
        """The waiter :meth:`pop_next` would serve at ``now``, left in the line."""
        best = self._best(now)
        return None if best is None else best[1].item

    def pop_next(self, now: float) -> T | None:
        """Take the waiter to serve now: the oldest of the highest effective class. ``None``: nobody waits."""
        self._tick(now)
        best = self._best(now)
        if best is None:
            return None
        r, entry = best
        self._classes[r].take(entry)
        del self._entries[entry.item]
        return entry.item

    def remove(self, item: T) -> None:
        """Take ``item`` out of the line (it gave up, or was served through another line).

        Raises:
            KeyError: ``item`` does not wait here.
        """
        r, entry = self._entries.pop(item)
        self._classes[r].take(entry)

    def discard(self, item: T) -> bool:
        """:meth:`remove` ``item`` if it waits here; whether it did."""
        if item not in self._entries:
            return False
        self.remove(item)
        return True

    def priority_of(self, item: T) -> Priority:
        """The class ``item`` waits in. Raises ``KeyError`` when it does not wait here."""
        return PRIORITIES[_TOP - self._entries[item][0]]

    def since(self, item: T) -> float:
        """When ``item`` arrived (what :meth:`push_front` wants back). Raises ``KeyError`` when it does not wait."""
        return self._entries[item][1].since

    def shed_for(self, priority: Priority, max_queue: int | None, now: float) -> T | None:
        """Make room for a newcomer of class ``priority`` in a line bounded by ``max_queue``.

        Returns ``None`` when the line has room (nothing shed), else the waiter dropped for the newcomer, taken
        out of the line: the youngest of the lowest class below ``priority``. The caller then pushes the
        newcomer, and tells the dropped waiter why it was refused.

        Raises:
            LineFull: the line is full and holds nobody of a lower class (a sheddable newcomer, or a default
                one among default and critical waiters): the newcomer is refused.
        """
        self._tick(now)
        if max_queue is None or len(self._entries) < max_queue:
            return None
        for r in range(rank(priority)):
            victim = self._classes[r].tail()
            if victim is not None:
                self._classes[r].take(victim)
                del self._entries[victim.item]
                return victim.item
        raise LineFull(priority, max_queue)

    def in_order(self, now: float) -> list[T]:
        """Every waiter in the order :meth:`pop_next` would serve them at ``now`` if nobody came or left."""
        keyed = [(self._key(r, entry, now), entry.item) for r, entry in self._entries.values()]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [item for _, item in keyed]

    def position(self, item: T, now: float) -> int:
        """How many waiters would be served before ``item`` at ``now`` (0: it is next). O(log n).

        Within a class the older waiter is always served first (it has waited as long or longer, so it is
        lifted as high or higher, and it wins the tie), so the waiters ahead are a prefix of each class: one
        bisection per other class counts them, and in its own class they are the ones that arrived before it.

        Raises:
            KeyError: ``item`` does not wait here.
        """
        r, entry = self._entries[item]
        ahead = self._classes[r].index(entry)  # its own class: exactly the ones that arrived before it
        others = [(r2, waiters.entries) for r2, waiters in enumerate(self._classes) if r2 != r and waiters.entries]
        if others:
            mine = self._key(r, entry, now)
            for r2, entries in others:

                def behind(other: _Entry[T], r2: int = r2) -> bool:
                    return not self._key(r2, other, now) > mine

                ahead += bisect.bisect_left(entries, True, key=behind)
        return ahead

    def count(self, priority: Priority) -> int:
        """How many waiters of class ``priority`` (as declared) wait."""
        return len(self._classes[rank(priority)].entries)
