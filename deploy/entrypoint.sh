#!/bin/sh
# Docent container entrypoint: the first argument picks the role.
#
#   gateway | ingest | retrieval | chat     docent serve ROLE
#   worker [--queues Q..] [--processes N] [--threads N]
#                                           docent worker ...   (Dramatiq: the ingest and memory queues)
#   migrate                                 docent migrate      (apply database migrations and exit)
#   health ROLE                             container health check: exit 0 when ROLE is healthy
#   docent ARGS...                          any other docent command: token, queue, docs, reindex, ...
#
# Configuration is the DOCENT_* environment (services/runtime/config.py).
# ENTRYPOINT_DRY_RUN=1 prints the command, one argument a line, instead of running it (tests use it).
set -eu

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
}

run() {
  if [ "${ENTRYPOINT_DRY_RUN:-}" = "1" ]; then
    printf '%s\n' "$@"
    exit 0
  fi
  exec "$@"
}

role="${1:-}"
if [ "$#" -gt 0 ]; then
  shift
fi

case "$role" in
  gateway|ingest|retrieval|chat)
    run docent serve "$role" "$@" ;;
  worker)
    run docent worker "$@" ;;
  migrate)
    run docent migrate "$@" ;;
  health|healthcheck)
    run python "$(dirname "$0")/healthcheck.py" "$@" ;;
  docent)
    run docent "$@" ;;
  help|-h|--help)
    usage ;;
  "")
    usage >&2
    exit 64 ;;
  *)
    echo "entrypoint: unknown role '$role' (gateway, ingest, retrieval, chat, worker, migrate, health, docent)" >&2
    exit 64 ;;
esac
