"""Stages of `privkeras demo`, one module per privacy policy."""
