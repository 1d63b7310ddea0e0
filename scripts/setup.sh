#!/usr/bin/env bash
# Installs what the project needs on Debian bookworm (as root), creates .venv from the lock and
# installs the project into it (the `klb` command).
# Idempotent: re-running it is cheap. Used by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql-client postgresql locales etcd-server etcd-client prometheus-pushgateway prometheus zstd pigz time python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these as services; the project runs its own throwaway instances instead.
  for svc in etcd prometheus prometheus-pushgateway; do
    (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
    pkill -x "$svc" >/dev/null 2>&1 || true
  done
fi

# a second libc locale: the tests restore money under another lc_monetary than the server's
if ! locale -a 2>/dev/null | grep -qx 'de_DE.utf8'; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: generating the de_DE.UTF-8 locale"
    localedef -i de_DE -f UTF-8 de_DE.UTF-8
  else
    echo "setup: the de_DE.UTF-8 locale is missing: as root, localedef -i de_DE -f UTF-8 de_DE.UTF-8" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || { echo "setup: $PY not found: install Python 3.11" >&2; exit 1; }
if ! "$PY" -c "import ensurepip, venv" 2>/dev/null; then  # Debian splits venv out
  apt-get install -y -qq python3-venv >/dev/null
fi

# RabbitMQ: its management API (127.0.0.1:15672) is what the project talks to.
if ! command -v rabbitmq-server >/dev/null; then
  echo "setup: installing rabbitmq-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 || true
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "setup: starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || true
fi

stamp=.venv/.lock-stamp
if [ ! -x .venv/bin/python ] || ! cmp -s requirements-dev.lock "$stamp" 2>/dev/null; then
  echo "setup: creating .venv from requirements-dev.lock (runtime + test tools)"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null 2> >(grep -v "^WARNING: Location" >&2)
  # --no-deps: the lock is the full set (barman's `psycopg2` comes as psycopg2-binary)
  .venv/bin/pip install -q --no-deps -r requirements-dev.lock 2> >(grep -v "^WARNING: Location" >&2)
  cp requirements-dev.lock "$stamp"
fi
# The project itself, editable (its dependencies are the lock's): gives .venv/bin/klb.
if [ ! -x .venv/bin/klb ] || ! cmp -s pyproject.toml .venv/.klb-stamp 2>/dev/null; then
  echo "setup: installing the klb command into .venv"
  # quiet: setuptools warns about editable installs on every run; a failure is shown in full
  .venv/bin/pip install -q --no-deps -e . >/dev/null 2>&1 || .venv/bin/pip install --no-deps -e .
  cp pyproject.toml .venv/.klb-stamp
fi

# PITR: PostgreSQL runs archive_command/restore_command as the `postgres` OS user, which cannot
# reach a Python under root's home. barman-cloud gets its own venv from Debian's python3, readable
# by every user, pinned by the same lock (docs/pitr.md).
BARMAN_VENV=${KLB_BARMAN_VENV:-/opt/knative-lambda-backup/barman-venv}
if [ ! -x "$BARMAN_VENV/bin/barman-cloud-wal-restore" ] || ! cmp -s requirements.lock "$BARMAN_VENV/.lock-stamp" 2>/dev/null; then
  echo "setup: creating $BARMAN_VENV (barman-cloud for archive/restore commands)"
  mkdir -p "$(dirname "$BARMAN_VENV")"
  /usr/bin/python3 -m venv "$BARMAN_VENV"
  grep -iE '^(barman|boto3|botocore|s3transfer|jmespath|urllib3|python-dateutil|six|psycopg2-binary)==' \
    requirements.lock > "$BARMAN_VENV/requirements.txt"
  "$BARMAN_VENV/bin/pip" install -q --no-deps -r "$BARMAN_VENV/requirements.txt" 2> >(grep -v "^WARNING: Location" >&2)
  cp requirements.lock "$BARMAN_VENV/.lock-stamp"
  chmod -R a+rX "$BARMAN_VENV"
fi
