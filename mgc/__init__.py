"""mgc: music genre and mood tagging at catalog scale, on Ray."""

__version__ = "0.1.0"
