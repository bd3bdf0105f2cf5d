"""Cloud-phone device scheduler (seed 000): devices, allocations, batch API."""
