"""What operators see of the running milter: log set-up (`logs`), Prometheus metrics (`metrics`) and
the one rendering of a verdict that log lines and `check --json` share (`verdicts`)."""
