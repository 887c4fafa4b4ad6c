"""
Operating a running tunnel: metrics and status over HTTP (and the bounds
of that endpoint), the status command, systemd's notifications, and the
log file's reopening.
"""
