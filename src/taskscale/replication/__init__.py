"""PostgreSQL streaming replication: pure planning, SQL against live nodes, typed status."""
