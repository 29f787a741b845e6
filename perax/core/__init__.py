"""What every stage shares: input errors, atomic writes, progress and logging, the launcher entry point."""
