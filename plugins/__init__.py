"""Ecosystem adapters."""
