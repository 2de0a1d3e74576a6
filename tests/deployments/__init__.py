# The keys every model deployment's info() reports (deployments/_common.py: replica_info):
# /v1/capabilities and the fault tests read this shape.
INFO_KEYS = {"name", "family", "source", "tiny", "fallback", "fallback_reason", "device",
             "dtype", "limits", "gpu_ids", "cuda_visible_devices", "actor_name", "niceness"}
