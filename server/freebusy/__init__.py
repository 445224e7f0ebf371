"""Busy time: expansion of calendar data into a busy-interval index, and queries on it.

Knows nothing of providers or the sync engine; reads calendar data and tech policies.
"""
