"""What an operator runs against a deployment: status, nodes, dead letters.

Plain functions over URLs returning plain data; ``dbsync_mq.commands`` and the
``dbsync-mq`` command line are shells over them.
"""
