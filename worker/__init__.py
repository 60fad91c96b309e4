"""Scheduled agent conversations on Supabase: the worker, its planner and the operator CLI."""

__version__ = "0.1.0"
