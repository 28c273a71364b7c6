#!/bin/bash
# Entry point of a `postgres-standby` container (compose.yaml at the project root, profile "replication").
# On first start it clones the primary with pg_basebackup (-R writes standby.signal and
# primary_conninfo) into a physical replication slot named after the container, then runs
# PostgreSQL as a hot standby. The data directory lives in the container, so a recreated standby
# clones afresh; `taskscale replicate` drops the slots of standbys that are gone.
set -euo pipefail
host="$(hostname)"
slot="standby_${host//[^a-z0-9_]/_}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # Bounded: after PRIMARY_WAIT_TRIES seconds exit 1 and let the restart policy try again.
  tries="${PRIMARY_WAIT_TRIES:-60}"
  until pg_isready --host "$PRIMARY_HOST" --port 5432 --quiet --timeout 2; do
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then
      echo "the primary at $PRIMARY_HOST:5432 is not ready: giving up (the restart policy retries)" >&2
      exit 1
    fi
    echo "waiting for the primary at $PRIMARY_HOST:5432"
    sleep 1
  done
  rm -rf "$PGDATA" && mkdir -p "$PGDATA" && chmod 0700 "$PGDATA"
  export PGPASSWORD="$REPLICATION_PASSWORD"
  # A half-finished earlier clone of this container may have left its slot behind.
  psql --host "$PRIMARY_HOST" --username "$REPLICATION_USER" --dbname "$POSTGRES_DB" -qAt -c \
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
     WHERE slot_name = '$slot' AND NOT active" >/dev/null
  pg_basebackup --host "$PRIMARY_HOST" --port 5432 --username "$REPLICATION_USER" \
    --pgdata "$PGDATA" -R -X stream -c fast -C -S "$slot"
  unset PGPASSWORD
fi
chmod 0700 "$PGDATA"
# Settings a standby must not have lower than its primary (see compose.yaml).
exec postgres -D "$PGDATA" -c hot_standby=on -c hot_standby_feedback=on \
  -c max_wal_senders=20 -c max_replication_slots=20 \
  -c cluster_name="$host" -c max_connections="${POSTGRES_MAX_CONNECTIONS:-200}" "$@"
