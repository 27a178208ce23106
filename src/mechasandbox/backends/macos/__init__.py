"""macOS backends: Seatbelt (`sandbox-exec` + a compiled SBPL profile) and Apple's
`container` CLI (one lightweight Linux VM per run).

Importing these modules is safe on any platform: each backend probes the host and reports
itself unavailable, with the reason, where it cannot run.
"""
