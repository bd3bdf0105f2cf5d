"""Placement as a state machine (issue 16 item 1), in memory: whatever sequence of
choose / give_back / take runs, the free set is exactly the devices neither chosen nor
taken, a device is never handed out twice, and every choice is the one the policy
(best fit, then the least loaded node, then the lowest id) makes over the free set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from batchops.scheduler.placement import Candidate, Placement, Window

NOW = datetime(2026, 11, 23, 8, tzinfo=UTC)
SIZES = [(2, 4096, 32768), (4, 8192, 65536), (4, 16384, 65536), (8, 16384, 131072)]
NODES = [None, "node-a", "node-b"]
devices_strategy = st.lists(
    st.tuples(st.sampled_from(SIZES), st.sampled_from(NODES), st.booleans()), min_size=1, max_size=12
)


class PlacementMachine(RuleBasedStateMachine):
    placement: Placement

    @initialize(specs=devices_strategy, loads=st.lists(st.integers(0, 3), min_size=3, max_size=3))
    def load(self, specs: list[tuple[tuple[int, int, int], str | None, bool]], loads: list[int]) -> None:
        self.devices = [
            Candidate(f"d{i:02d}", f"Device-{i:02d}", *size, node) for i, (size, node, _) in enumerate(specs)
        ]
        # some devices are reserved from 45 minutes on: free for a short ask, not for a long one
        self.windows = {
            d.id: [Window(NOW + timedelta(minutes=45), NOW + timedelta(minutes=90), f"resv-{d.id}")]
            for d, (_, _, reserved) in zip(self.devices, specs, strict=True)
            if reserved
        }
        self.load_of: dict[str | None, int] = dict(zip(NODES, loads, strict=True))
        self.placement = Placement(list(self.devices), dict(self.load_of), dict(self.windows))
        self.free = {d.id for d in self.devices}
        self.handed_out: list[Candidate] = []  # chosen or taken, not given back

    def expected(self, min_cpu: int | None, min_memory: int | None, minutes: int) -> Candidate | None:
        """The policy over the free set, by brute force."""
        end = NOW + timedelta(minutes=minutes)
        usable = [
            d
            for d in self.devices
            if d.id in self.free
            and (min_cpu is None or d.cpu_cores >= min_cpu)
            and (min_memory is None or d.memory_mb >= min_memory)
            and not any(w.overlaps(NOW, end) for w in self.windows.get(d.id, ()))
        ]
        return min(usable, key=lambda d: (d.size, self.load_of[d.node_id], d.id), default=None)

    @rule(
        min_cpu=st.sampled_from([None, 2, 4, 8, 16]),
        min_memory=st.sampled_from([None, 4096, 8192, 16384]),
        minutes=st.sampled_from([30, 60]),
        keep=st.booleans(),
    )
    def choose(self, min_cpu: int | None, min_memory: int | None, minutes: int, keep: bool) -> None:
        want = self.expected(min_cpu, min_memory, minutes)
        got = self.placement.choose(
            min_cpu=min_cpu, min_memory=min_memory, start=NOW, end=NOW + timedelta(minutes=minutes), take=keep
        )
        assert got == want
        if got is None:
            return
        self.load_of[got.node_id] += 1
        if keep:
            assert got.id in self.free and all(h.id != got.id for h in self.handed_out)  # never twice
            self.free.remove(got.id)
            self.handed_out.append(got)

    @rule(data=st.data())
    def choose_pinned(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from(self.devices))
        got = self.placement.choose(
            min_cpu=None, min_memory=None, start=NOW, end=NOW + timedelta(minutes=30), pinned=device.id
        )
        assert got == (device if device.id in self.free else None)
        if got is not None:
            self.load_of[got.node_id] += 1
            self.free.remove(got.id)
            self.handed_out.append(got)

    @precondition(lambda self: self.handed_out)
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        device = self.handed_out.pop(data.draw(st.integers(0, len(self.handed_out) - 1)))
        self.placement.give_back(device)
        self.load_of[device.node_id] -= 1
        self.free.add(device.id)
        self.placement.give_back(device)  # a second undo of the same choice changes nothing

    @precondition(lambda self: self.free)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        device_id = data.draw(st.sampled_from(sorted(self.free)))
        self.placement.take(device_id)
        device = next(d for d in self.devices if d.id == device_id)
        self.load_of[device.node_id] += 1
        self.free.remove(device_id)
        self.handed_out.append(device)

    @invariant()
    def free_set_is_exact(self) -> None:
        listed = [d.id for nodes in self.placement.by_node.values() for ds in nodes.values() for d in ds]
        assert sorted(listed) == sorted(self.free)  # each free device once, nothing else
        assert set(self.placement.by_id) == self.free
        for nodes in self.placement.by_node.values():
            for ds in nodes.values():
                assert [d.id for d in ds] == sorted(d.id for d in ds)  # id order: a node's best is its first
        assert self.placement.has_free == bool(self.free)
        assert self.placement.free_sizes() == sorted({d.size for d in self.devices if d.id in self.free})
        assert {n: self.placement.node_load[n] for n in NODES} == self.load_of


PlacementMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestPlacementMachine = PlacementMachine.TestCase
