"""Allot's chaos suite (arrives with the chaos issue)."""
