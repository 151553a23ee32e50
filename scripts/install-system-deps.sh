#!/usr/bin/env bash
# Installs the Debian packages that the test suite runs for real, once:
#   prometheus      promtool checks deploy/prometheus.yml; a real Prometheus scrapes Triton and the gateway
#   docker-compose  parses and normalizes docker-compose.yml (`config` needs no Docker engine)
#   curl            the command of the compose file's Triton health check, run for real
#   qemu-user       qemu-x86_64 -cpu Haswell: int8 models checked on an emulated AVX2-only CPU
#   postgresql      initdb/pg_ctl/postgres: tests/fixtures/postgres.py runs a throwaway cluster
#   redis-server    tests/fixtures/redis.py runs a throwaway Redis
#   chromium        tests/fixtures/browser.py drives Debian's headless Chromium (the try-it page)
#   chromium-driver its chromedriver, which Selenium is given (nothing is downloaded at run time)
# Quick when they are already there. Needs root or sudo; otherwise it says what to install.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v qemu-x86_64 >/dev/null 2>&1 || need+=(qemu-user)
# The server, not just psql (postgresql-client alone has no initdb).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# Debian's redis-server package brings redis-tools (redis-cli) with it.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "Missing Debian packages: ${need[*]}. Install them as root: apt-get install -y ${need[*]}" >&2
  exit 1
fi

echo "Installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# A policy-rc.d that answers 101 keeps the packages' postinst from starting a prometheus
# daemon on port 9090, the `main` PostgreSQL cluster Debian creates on 5432 or a Redis on 6379:
# the tests start their own Prometheus, PostgreSQL and Redis on free ports.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Belt and braces: should a postinst have started a cluster anyway (a policy-rc.d that was
# already there and allows it), stop it; the `main` cluster itself may stay, stopped.
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
    if [[ "$status" == online* ]]; then
      "${sudo[@]}" pg_ctlcluster "$version" "$cluster" stop || true
    fi
  done
fi
# The same for Redis: a packaged daemon would hold 6379 for nothing (the tests start their own
# on free ports). Only that daemon: the one in the package's pid file, or a redis-server run as
# the package's `redis` system user (the fixture's servers run as the test user, never as it).
if [ -x /usr/bin/redis-server ]; then
  redis_pids=$("${sudo[@]}" cat /run/redis/redis-server.pid 2>/dev/null || true)
  redis_pids+=" $(pgrep -u redis -x redis-server 2>/dev/null || true)"
  running=()
  for pid in $redis_pids; do
    # A stale pid file may name another process by now: only a live redis-server counts.
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = redis-server ]; then
      running+=("$pid")
    fi
  done
  if [ ${#running[@]} -gt 0 ]; then
    "${sudo[@]}" service redis-server stop >/dev/null 2>&1 \
      || "${sudo[@]}" kill "${running[@]}" 2>/dev/null || true
  fi
fi
