#!/usr/bin/env bash
# Same gate as CI (.ci/run): fmt, clippy -D warnings, cargo test.
exec bash "$(dirname "$0")/../.ci/run" "$@"
