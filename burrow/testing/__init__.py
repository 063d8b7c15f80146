"""Reusable test machinery: backend factories and in-process servers for every test layer."""
