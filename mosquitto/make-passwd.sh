#!/usr/bin/env bash
# Make Mosquitto's password file for every user of the ACL, for a broker you run yourself.
# (compose.yaml does not use this script: its Mosquitto makes the password file from .env at every
# start, mosquitto/compose-entrypoint.sh.)
#
#   mosquitto/make-passwd.sh PASSWD_FILE [SECRETS_ENV_FILE [ACL_FILE]]
#
# Users: every `user NAME` line of ACL_FILE (default: mosquitto/acl; render yours with
# `uns broker-acl --site sites/<plant>.yaml`): one per edge node, and services, api, viewer,
# integration. Each password comes from UNS_MQTT_<NAME>_PASSWORD (NAME in capitals, every other
# character than a letter or digit as `_`: dayton.edge-machining is
# UNS_MQTT_DAYTON_EDGE_MACHINING_PASSWORD); any that is unset is generated. The passwords are
# written, readable by the owner only, to SECRETS_ENV_FILE (default: mosquitto/secrets.env, ignored
# by git) under the same names, for you to give each process its own (docs/operations.md). Nothing
# secret is ever printed or committed.
set -euo pipefail
usage="usage: make-passwd.sh PASSWD_FILE [SECRETS_ENV_FILE [ACL_FILE]]"
passwd_file=${1:?$usage}
secrets=${2:-"$(dirname "$0")/secrets.env"}
acl=${3:-"$(dirname "$0")/acl"}
command -v mosquitto_passwd >/dev/null || { echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }
[ -r "$acl" ] || { echo "cannot read the ACL $acl" >&2; exit 1; }
users=$(awk '$1 == "user" && NF == 2 { print $2 }' "$acl")
[ -n "$users" ] || { echo "the ACL $acl names no user" >&2; exit 1; }
gen() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }
password_var() { printf 'UNS_MQTT_%s_PASSWORD' "$(printf '%s' "$1" | tr 'a-z' 'A-Z' | tr -c 'A-Z0-9' '_')"; }
umask 077
: > "$passwd_file"
: > "$secrets"
for user in $users; do
    var=$(password_var "$user")
    password=${!var:-$(gen)}
    mosquitto_passwd -b "$passwd_file" "$user" "$password"
    printf '%s=%s\n' "$var" "$password" >> "$secrets"
done
# Mosquitto drops to the mosquitto user when started as root: let it read the password file.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then chown mosquitto: "$passwd_file"; fi
echo "wrote $passwd_file and $secrets for" $users
