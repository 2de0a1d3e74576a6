"""The bottom floor beside `common`: metrics (`telemetry.metrics`) and logs with secret
redaction (`telemetry.logs`), shared by the model deployments and the ingress. Nothing here
imports a web framework or a layer above; Ray is imported only when it is already running.
"""
