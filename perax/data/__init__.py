"""Corpora into tables: labels, corpus loaders, the utterance and vote tables, audio and log-mel features."""
