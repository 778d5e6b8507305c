"""What every `trimmer` process shares at run time, independent of the rest.

- `settings`: the settings framework (a frozen dataclass per process: file,
  then flags, then one check listing every problem)
- `stop_signals`: SIGTERM/SIGINT/SIGHUP handled explicitly, whatever was inherited
- `handoff`: the one-slot exchange between a follower thread and its loop
- `files`: atomic writes, directory syncs, locks, bounded JSON reads
- `exit_codes`: the exit-status policy of every command
- `tracing`: optional OpenTelemetry spans (settings, exporters, traceparent)
"""
