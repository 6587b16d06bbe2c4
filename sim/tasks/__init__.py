"""Goal-reaching tasks, one robot a file."""
