"""Studio (seed 003): batch AI video and image generation, behind one service.

The rules live by operation: accepting a batch with its credits held
(``submit.py``), looking at batches and downloading their results (``views.py``),
pausing, resuming, cancelling and retrying them (``control.py``), and the
provider's callbacks (``callbacks.py``). The work itself is done by
:mod:`batchops.studio.engine` in the worker processes: these only write rows the
engine picks up. Every rule that reads the time asks the clock given here.
"""

from __future__ import annotations

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.studio.callbacks import ProviderCallbacks
from batchops.studio.control import BatchControl
from batchops.studio.providers import Provider
from batchops.studio.submit import Submission
from batchops.studio.timing import Timing
from batchops.studio.views import BatchViews


class StudioService:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        *,
        clock: Clock = system_clock,
        callback_key: str = "",
        time_scale: float = 1.0,
    ) -> None:
        views = BatchViews(db)
        control = BatchControl(db, clock, provider)
        self.submit = Submission(db, clock).submit
        self.get = views.get
        self.list = views.list
        self.snapshot = views.snapshot
        self.download = views.download
        self.pause = control.pause
        self.resume = control.resume
        self.cancel = control.cancel
        self.retry_failed = control.retry_failed
        self.provider_callback = ProviderCallbacks(db, clock, Timing(time_scale), key=callback_key).provider_callback
