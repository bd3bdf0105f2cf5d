"""Billing and metering (seed 001): a ledger of exact balances, holds and charges,
and usage reports that are charged exactly once."""
