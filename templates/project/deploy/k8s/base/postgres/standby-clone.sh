#!/bin/bash
# Init container of a standby: clone the primary once (pg_basebackup -R writes
# standby.signal and primary_conninfo); a restarted standby keeps its data directory.
set -euo pipefail
if [ -s "$PGDATA/PG_VERSION" ]; then
  echo "standby data directory already initialised: keeping it"
  exit 0
fi
until pg_isready --host "$PRIMARY_HOST" --port 5432 --quiet; do
  echo "waiting for the primary at $PRIMARY_HOST:5432"
  sleep 2
done
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"
PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup --host "$PRIMARY_HOST" --port 5432 \
  --username "$REPLICATION_USER" --pgdata "$PGDATA" -R -X stream -c fast --progress
