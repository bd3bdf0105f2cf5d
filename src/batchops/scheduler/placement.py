"""Where a request lands: the placement policy (seed 000 phase 4, "智能调度算法").

1. **Best fit.** Candidate devices are grouped by size (cpuCores, memoryMB,
   storageMB) and tried smallest first; the first size that meets the request's
   ``devicePreferences`` wins, so large devices stay free for requests that need them.
2. **Spread.** Among the devices of that size, the one on the node with the fewest
   active allocations wins (ties: lowest device id), so load and the blast radius
   of a failing node are spread.
3. **Windows.** A device is skipped if the requested window ``[start, end)``
   overlaps a window already taken on it (a reservation, or for reservations an
   allocation still running), except the window of the reservation being fulfilled.

Everything here is in memory: the caller loads devices, node loads and windows in
a few queries, and the placement keeps them up to date as it places a batch. A
batch of n asks needs at most n devices of any (size, node) bucket, so the caller
may load only the first few of each bucket; a bucket loaded in part that runs dry
raises ``PlacementIncomplete`` and the caller loads every device, so the answer is
always the one the whole fleet would give.
"""

from __future__ import annotations

from bisect import insort
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime


class PlacementIncomplete(Exception):
    """A bucket that was loaded only in part ran out of usable devices."""


Bucket = tuple[tuple[int, int, int], str | None]  # (size, node)


@dataclass
class Candidate:
    id: str
    name: str
    cpu_cores: int
    memory_mb: int
    storage_mb: int
    node_id: str | None

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.cpu_cores, self.memory_mb, self.storage_mb)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    owner: str  # reservation id or allocation id

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end


def _by_id(device: Candidate) -> str:
    return device.id


class Placement:
    def __init__(
        self,
        devices: list[Candidate],
        node_load: dict[str | None, int],
        windows: dict[str, list[Window]],
        partial: set[Bucket] | None = None,
    ) -> None:
        """``partial``: the buckets of which only the first devices (in id order) were loaded."""
        # The free set, in one structure: per size, per node, the devices in id order (the
        # best device of a node is its first unblocked one, so a choice costs O(nodes), not
        # O(devices)). ``by_id`` indexes the same devices; ``_add``/``_remove`` keep both.
        self.by_node: dict[tuple[int, int, int], dict[str | None, list[Candidate]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.by_id: dict[str, Candidate] = {}
        self.sizes: list[tuple[int, int, int]] = []
        for device in sorted(devices, key=_by_id):
            self._add(device)
        self.node_load = defaultdict(int, node_load)
        self.windows: dict[str, list[Window]] = defaultdict(list, windows)
        self.partial = partial or set()

    def _add(self, device: Candidate) -> None:
        if device.size not in self.by_node:
            insort(self.sizes, device.size)
        insort(self.by_node[device.size][device.node_id], device, key=_by_id)
        self.by_id[device.id] = device

    def _remove(self, device: Candidate) -> None:
        self.by_node[device.size][device.node_id].remove(device)
        del self.by_id[device.id]

    def blocking_window(
        self, device_id: str, start: datetime, end: datetime, ignore: str | None = None
    ) -> Window | None:
        return next(
            (w for w in self.windows.get(device_id, ()) if w.owner != ignore and w.overlaps(start, end)),
            None,
        )

    def choose(
        self,
        *,
        min_cpu: int | None,
        min_memory: int | None,
        start: datetime,
        end: datetime,
        pinned: str | None = None,
        ignore: str | None = None,
        take: bool = True,
    ) -> Candidate | None:
        """The device for one request, or None. ``take=False`` keeps it a candidate
        (reservations: the device stays usable for other windows)."""
        if pinned is not None:
            device = self.by_id.get(pinned)
            if device is None or self.blocking_window(pinned, start, end, ignore) is not None:
                return None
            return self._taken(device, take)
        for size in self.sizes:
            cpu, memory, _ = size
            if (min_cpu is not None and cpu < min_cpu) or (min_memory is not None and memory < min_memory):
                continue
            device = self._least_loaded(size, start, end, ignore)
            if device is not None:
                return self._taken(device, take)
        return None

    def _least_loaded(
        self, size: tuple[int, int, int], start: datetime, end: datetime, ignore: str | None
    ) -> Candidate | None:
        """The free device of this size on the least loaded node (ties: lowest device id)."""
        best: Candidate | None = None
        best_key: tuple[int, str] | None = None
        windows = self.windows
        for node, devices in self.by_node[size].items():
            load = self.node_load[node]
            if best_key is not None and load > best_key[0]:
                continue
            for device in devices:  # id order: the first free one is this node's best
                if best_key is not None and (load, device.id) >= best_key:
                    break
                if device.id in windows and self.blocking_window(device.id, start, end, ignore) is not None:
                    continue
                best, best_key = device, (load, device.id)
                break
            else:  # no usable device among those loaded: unloaded ones may be
                if (size, node) in self.partial:
                    raise PlacementIncomplete(f"bucket {size} on {node} was loaded in part")
        return best

    def _taken(self, device: Candidate, take: bool) -> Candidate:
        self.node_load[device.node_id] += 1
        if take:
            self._remove(device)
        return device

    def take(self, device_id: str) -> None:
        """Take a device chosen before this placement was (re)loaded."""
        self._taken(self.by_id[device_id], True)

    def give_back(self, device: Candidate) -> None:
        """Undo a ``choose`` whose allocation was refused afterwards (no balance): the
        device is free again for the rest of the pass, in its place in id order."""
        if device.id in self.by_id:  # not taken (or given back already): nothing to undo
            return
        self.node_load[device.node_id] -= 1
        self._add(device)

    def free_sizes(self) -> list[tuple[int, int, int]]:
        """The sizes of which at least one device is free (smallest first)."""
        return [size for size in self.sizes if any(self.by_node[size].values())]

    def add_window(self, device_id: str, window: Window) -> None:
        self.windows[device_id].append(window)

    @property
    def has_free(self) -> bool:
        return bool(self.by_id) or bool(self.partial)
