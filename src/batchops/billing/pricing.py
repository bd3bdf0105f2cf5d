"""Device-time pricing (seed 001: cost from durationSeconds and the device snapshot).

Rates are exact decimals from settings; the cost is rounded UP to the fen, so
the estimate held at allocation (for the booked minutes) is never less than the
cost of any shorter real use.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from batchops.settings import Settings

MB_PER_GB = Decimal(1024)
SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class Pricing:
    cpu_core_hour: Decimal
    memory_gb_hour: Decimal
    storage_gb_hour: Decimal

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        return cls(settings.price_cpu_core_hour, settings.price_memory_gb_hour, settings.price_storage_gb_hour)

    def hourly(self, cpu_cores: int, memory_mb: int, storage_mb: int) -> Decimal:
        return (
            cpu_cores * self.cpu_core_hour
            + memory_mb / MB_PER_GB * self.memory_gb_hour
            + storage_mb / MB_PER_GB * self.storage_gb_hour
        )

    def hourly_millifen(self, cpu_cores: int, memory_mb: int, storage_mb: int) -> int:
        """The hourly price in thousandths of a fen, rounded down: a lower bound of any
        cost on this size that SQL can compare in integers (the wait queue's balance
        filter: who cannot pay this is certainly refused by ``cost``)."""
        millifen = self.hourly(cpu_cores, memory_mb, storage_mb) * 100_000
        return int(millifen.to_integral_value(rounding=ROUND_FLOOR))

    def cost(self, seconds: int, cpu_cores: int, memory_mb: int, storage_mb: int) -> int:
        """Cost in fen of ``seconds`` on a device of this size."""
        yuan = self.hourly(cpu_cores, memory_mb, storage_mb) * max(0, seconds) / SECONDS_PER_HOUR
        return int((yuan * 100).to_integral_value(rounding=ROUND_CEILING))
