"""Which services changed since the last sync: kube-proxy's change tracker.

kube-proxy accumulates, per Service, the state before the first unsynced
change and the state after the last one (pkg/proxy/servicechangetracker.go);
a change that is undone before the sync disappears. A mode that supports
partial sync rewrites only those services' rules. `diff_states` gives the
same answer for two snapshots, comparing entries by identity first (shared
entries are unchanged) and by value only when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .view import NamespacedName, ProxyState, ServiceEntry

Change = tuple[ServiceEntry | None, ServiceEntry | None]


@dataclass
class ChangeTracker:
    items: dict[NamespacedName, Change] = field(default_factory=dict)

    def update(self, name: NamespacedName, previous: ServiceEntry | None, current: ServiceEntry | None) -> bool:
        """Record one change; returns whether anything is pending."""
        if name in self.items:
            previous = self.items[name][0]
        if previous == current:
            self.items.pop(name, None)
        else:
            self.items[name] = (previous, current)
        return bool(self.items)

    def checkout(self) -> dict[NamespacedName, Change]:
        """The pending changes, which are then forgotten."""
        items, self.items = self.items, {}
        return items

    def __bool__(self) -> bool:
        return bool(self.items)


def diff_states(old: ProxyState, new: ProxyState) -> dict[NamespacedName, Change]:
    changes: dict[NamespacedName, Change] = {}
    old_entries, new_entries = old.entries, new.entries
    for name, entry in new_entries.items():
        before = old_entries.get(name)
        if before is not entry and before != entry:
            changes[name] = (before, entry)
    for name, entry in old_entries.items():
        if name not in new_entries:
            changes[name] = (entry, None)
    return changes
