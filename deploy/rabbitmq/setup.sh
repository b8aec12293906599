#!/usr/bin/env bash
# Creates or updates the pipeline's RabbitMQ users, one per role, with the permissions of
# deploy/rabbitmq/permissions (next to this script), through rabbitmqctl. Idempotent: compose's
# rabbitmq-setup service runs it at every start; run it by hand on a broker you manage (on a
# node, or with RABBITMQ_NODE and the node's Erlang cookie).
#
# Environment:
#   RABBITMQ_INGEST_PASSWORD, RABBITMQ_WORKER_PASSWORD, RABBITMQ_OPERATOR_PASSWORD
#                      required: the passwords (openssl rand -hex 24 makes a good one)
#   RABBITMQ_INGEST_USER, RABBITMQ_WORKER_USER, RABBITMQ_OPERATOR_USER
#                      the user names (default webhooks-ingest, webhooks-worker, webhooks-operator)
#   AMQP_PREFIX        the prefix the permissions are for (default webhooks)
#   RABBITMQ_VHOST     the virtual host (default /)
#   RABBITMQ_NODE      the node rabbitmqctl talks to (default: its own default)
#
# Passwords go to rabbitmqctl on its standard input, never on a command line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=${AMQP_PREFIX:-webhooks}
vhost=${RABBITMQ_VHOST:-/}
ctl=(rabbitmqctl --quiet)
if [[ -n ${RABBITMQ_NODE:-} ]]; then
  ctl+=(--node "$RABBITMQ_NODE")
fi

# The same rule as the AMQP_PREFIX setting; of its characters only the dot means something
# in a regular expression.
if [[ ! $prefix =~ ^[A-Za-z0-9._-]{1,100}$ ]]; then
  echo "AMQP_PREFIX=$prefix: use 1 to 100 of A-Z a-z 0-9 . - _" >&2
  exit 1
fi
escaped=${prefix//./\\.}

# Every role's password first, so a missing one changes nothing.
roles=()
while read -r role _; do
  [[ -z $role || $role == \#* ]] && continue
  roles+=("$role")
  password_var="RABBITMQ_${role^^}_PASSWORD"
  if [[ -z ${!password_var:-} ]]; then
    echo "$password_var is required: the password of the RabbitMQ user of $role (openssl rand -hex 24)" >&2
    exit 1
  fi
done <"$here/permissions"

existing=$("${ctl[@]}" list_users --no-table-headers </dev/null | cut -f1)
# The file comes in on descriptor 3: rabbitmqctl reads standard input.
while read -r role configure write readable <&3; do
  [[ -z $role || $role == \#* ]] && continue
  user_var="RABBITMQ_${role^^}_USER"
  password_var="RABBITMQ_${role^^}_PASSWORD"
  user=${!user_var:-webhooks-$role}
  if grep -qxF -- "$user" <<<"$existing"; then
    printf '%s' "${!password_var}" | "${ctl[@]}" change_password "$user" >/dev/null
  else
    printf '%s' "${!password_var}" | "${ctl[@]}" add_user "$user" >/dev/null
  fi
  configure=${configure//"{prefix}"/"$escaped"}
  write=${write//"{prefix}"/"$escaped"}
  readable=${readable//"{prefix}"/"$escaped"}
  "${ctl[@]}" set_permissions -p "$vhost" "$user" "$configure" "$write" "$readable" </dev/null >/dev/null
  echo "RabbitMQ user $user ($role) on vhost $vhost: configure '$configure' write '$write' read '$readable'"
done 3<"$here/permissions"
echo "RabbitMQ users ready: ${roles[*]}"
