"""What a run leaves on disk: replicated (`.pt`) and sharded (DCP) checkpoints, written atomically and
read without running code, and the run directory and its lock.
"""
