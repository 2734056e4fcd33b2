"""The MTA-facing shell: the pymilter adapter (`adapter`: callbacks -> Transaction, Verdict -> milter
actions), the pre-fork worker pool (`pool`) and systemd readiness (`sdnotify`)."""
