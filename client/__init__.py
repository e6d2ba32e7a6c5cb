"""Allot's client library (arrives with the client issue)."""
