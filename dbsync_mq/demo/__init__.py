"""A tiny application used by ``dbsync-mq demo`` and the README."""
