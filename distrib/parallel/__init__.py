"""Distribution: the launcher's environment and the process group, DDP, sharded samplers, and
embedding tables sharded across ranks with TorchRec (Adam on the touched rows only).
"""
