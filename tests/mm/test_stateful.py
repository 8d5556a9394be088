"""Random allocation/free sequences of mixed orders and migratetypes; Machine.check() after
every step, plus an independent model of which frames are allocated."""

import errno

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import thpcore

TYPES = ["unmovable", "movable", "reclaimable"]


class BuddyMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = thpcore.Machine("16M", seed=0)
        self.n = self.m.nr_pages
        self.owned = np.zeros(self.n, dtype=bool)      # model: frames we hold
        self.blocks = {}                                # pfn -> order

    def _take(self, pfn, order):
        pfn = int(pfn)
        assert pfn % (1 << order) == 0
        assert not self.owned[pfn:pfn + (1 << order)].any(), "allocator handed out a busy frame"
        self.owned[pfn:pfn + (1 << order)] = True
        self.blocks[pfn] = order

    @rule(order=st.integers(0, 10), mt=st.sampled_from(TYPES))
    def alloc(self, order, mt):
        try:
            pfn = self.m.kernel_alloc(order, mt)
        except OSError as e:
            assert e.errno == errno.ENOMEM
            return
        self._take(pfn, order)

    @rule(order=st.integers(0, 4), mt=st.sampled_from(TYPES), count=st.integers(0, 600))
    def alloc_bulk(self, order, mt, count):
        for pfn in self.m.kernel_alloc_bulk(order, mt, count):
            self._take(pfn, order)

    @precondition(lambda self: self.blocks)
    @rule(data=st.data())
    def free_one(self, data):
        pfn = data.draw(st.sampled_from(sorted(self.blocks)))
        order = self.blocks.pop(pfn)
        self.m.kernel_free(pfn, order)
        self.owned[pfn:pfn + (1 << order)] = False

    @precondition(lambda self: len(self.blocks) > 1)
    @rule(data=st.data())
    def free_many(self, data):
        pfns = data.draw(st.lists(st.sampled_from(sorted(self.blocks)), unique=True, min_size=1))
        by_order = {}
        for p in pfns:
            by_order.setdefault(self.blocks[p], []).append(p)
        for order, group in by_order.items():
            self.m.kernel_free_bulk(group, order)
            for p in group:
                del self.blocks[p]
                self.owned[p:p + (1 << order)] = False

    @rule(pfn=st.integers(-2, 5000), order=st.integers(-1, 11))
    def bad_free(self, pfn, order):
        if self.blocks.get(pfn) == order:
            return
        before = self.m.state_hash()
        try:
            self.m.kernel_free(pfn, order)
        except ValueError:
            pass
        else:
            raise AssertionError(f"freeing pfn {pfn} order {order} was accepted")
        assert self.m.state_hash() == before

    @rule(factor=st.integers(1, 3000))
    def set_watermark_scale_factor(self, factor):
        self.m.sysctl.set("watermark_scale_factor", factor)

    @rule(mode=st.sampled_from(["always", "madvise", "never"]))
    def set_thp_enabled(self, mode):
        self.m.thp.enabled = mode

    @invariant()
    def consistent(self):
        self.m.check()
        zone = self.m.page_alloc.zone
        assert zone.nr_free_pages == self.n - int(self.owned.sum())
        wmin, wlow, whigh = zone.watermarks()
        assert 0 <= wmin <= wlow <= whigh


TestBuddyMachine = BuddyMachine.TestCase
TestBuddyMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
