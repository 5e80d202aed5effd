"""`inspector replay`: re-run recorded frames through the daemon's exact per-frame path and report."""
