#!/bin/bash
# usage: callgrind-keepalive.sh OUT BIN CONFIG URL -> callgrind-newconn.sh's method over
# keep-alive TLS requests through a passthrough port (`tollgate bench -k --sni app.test
# -c 10`) instead of new connections; prints the request count to divide by.
LOAD_ARGS="-k --sni app.test -c 10" UNIT=requests exec "$(dirname "$0")/callgrind-newconn.sh" "$@"
