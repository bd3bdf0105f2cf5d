"""Dining (seed 002): canteen batch ordering by department admins, behind one service.

The rules live by operation: placing batches of orders (``ordering.py``), the
canteen's departments and menus (``canteen.py``), orders once placed: listing,
cancelling, the kitchen's daily summary (``orders.py``); what they all judge by
(the canteen's date, who may act, the seed's messages) in ``rules.py``. Every rule
that reads the time asks the runtime's clock.
"""

from __future__ import annotations

import datetime as dt

from batchops.core.runtime import Runtime
from batchops.dining.canteen import CanteenSetup
from batchops.dining.ordering import Ordering
from batchops.dining.orders import PlacedOrders
from batchops.dining.rules import local_today


class DiningService:
    def __init__(self, rt: Runtime) -> None:
        self.clock = rt.clock
        self.timezone = rt.settings.timezone
        ordering = Ordering(rt.batch, rt.clock, self.timezone)
        canteen = CanteenSetup(rt.db, rt.clock)
        orders = PlacedOrders(rt.db, rt.clock, self.timezone)
        self.place_orders = ordering.place_orders
        self.upsert_departments = canteen.upsert_departments
        self.list_departments = canteen.list_departments
        self.upsert_menus = canteen.upsert_menus
        self.publish_menus = canteen.publish_menus
        self.list_menus = canteen.list_menus
        self.list_orders = orders.list_orders
        self.cancel_order = orders.cancel_order
        self.day_summary = orders.day_summary

    def today(self) -> dt.date:
        """The canteen's date now (``BATCHOPS_TIMEZONE``): what "past" is judged by."""
        return local_today(self.timezone, self.clock())
