"""Foundations every layer may use: atomic files, printable text, bounded JSON, deadlines,
background threads, image sniffing, and the located :class:`Problem`. Imports nothing above it."""
