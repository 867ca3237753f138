#!/bin/sh
# compose.yaml's entrypoint for Mosquitto (the eclipse-mosquitto:2.0 image; POSIX sh, busybox there):
# at every start, make the password file from the environment, put the ACL, the TLS certificates and
# the included files (bridges to an enterprise broker) beside the config, then run the command given
# (Mosquitto). Changing a password in .env and
# `docker compose up -d` applies it.
#
#   compose-entrypoint.sh COMMAND [ARGS...]
#
# Users: every `user NAME` of the ACL (rendered from the site model by `uns broker-acl`: one per
# edge node, and services, api, viewer, integration). Each one's password comes from
# UNS_MQTT_<NAME>_PASSWORD, NAME in capitals with every other character than a letter or digit as
# `_` (dayton.edge-machining: UNS_MQTT_DAYTON_EDGE_MACHINING_PASSWORD), each required. Nothing
# secret is printed. The password file, the ACL and the server key are mode 600 and, when started
# as root, owned by the mosquitto user: Mosquitto reads them after it has dropped from root to it.
#
# Where (defaults for the image): UNS_MOSQUITTO_CONFIG_DIR (/mosquitto/config: passwd, acl and
# certs/ are written there), UNS_MOSQUITTO_ACL_SOURCE (/uns/acl: the project's mosquitto/acl,
# mounted read-only), UNS_MOSQUITTO_CERTS_SOURCE (/uns/certs: ca.crt, server.crt, server.key made
# by `uns make-certs`, mounted read-only), UNS_MOSQUITTO_CONFD_SOURCE (/uns/conf.d: the project's
# mosquitto/conf.d, mounted read-only; its files, a bridge's `uns enterprise bridge` renders and the
# enterprise CA's certificate, go to conf.d/ beside the config, mode 600, which the shipped config
# includes; an empty conf.d/ when it has none), UNS_MOSQUITTO_DATA_DIR (/mosquitto/data: handed to
# the mosquitto user).
set -eu

config=${UNS_MOSQUITTO_CONFIG_DIR:-/mosquitto/config}
acl_source=${UNS_MOSQUITTO_ACL_SOURCE:-/uns/acl}
certs_source=${UNS_MOSQUITTO_CERTS_SOURCE:-/uns/certs}
confd_source=${UNS_MOSQUITTO_CONFD_SOURCE:-/uns/conf.d}
data=${UNS_MOSQUITTO_DATA_DIR:-/mosquitto/data}

# The variable holding a user's password (uns/broker.py password_env does the same).
password_var() { printf 'UNS_MQTT_%s_PASSWORD' "$(printf '%s' "$1" | tr 'a-z' 'A-Z' | tr -c 'A-Z0-9' '_')"; }

if [ ! -r "$acl_source" ]; then
    echo "mosquitto: cannot read the ACL $acl_source; not starting" >&2
    exit 1
fi
users=$(awk '$1 == "user" && NF == 2 { print $2 }' "$acl_source")
if [ -z "$users" ]; then
    echo "mosquitto: the ACL $acl_source names no user; not starting" >&2
    exit 1
fi
missing=""
for user in $users; do
    var=$(password_var "$user")
    eval "value=\${$var:-}"  # $var is [A-Z0-9_] only
    [ -n "$value" ] || missing="$missing $var"
done
if [ -n "$missing" ]; then
    echo "mosquitto: set$missing (see .env.example); not starting" >&2
    exit 1
fi
for name in ca.crt server.crt server.key; do
    if [ ! -r "$certs_source/$name" ]; then
        echo "mosquitto: no $certs_source/$name (make the certificates with \`uns make-certs\`, docs/operations.md \"TLS\"); not starting" >&2
        exit 1
    fi
done
if [ "$#" -eq 0 ]; then
    echo "usage: compose-entrypoint.sh COMMAND [ARGS...]" >&2
    exit 2
fi

umask 077
passwd_new="$config/passwd.new"
acl_new="$config/acl.new"
certs_new="$config/certs.new"
confd_new="$config/conf.d.new"
rm -rf "$passwd_new" "$acl_new" "$certs_new" "$confd_new"
: > "$passwd_new"
for user in $users; do
    eval "value=\${$(password_var "$user")}"
    mosquitto_passwd -b "$passwd_new" "$user" "$value"
done
cat "$acl_source" > "$acl_new"
mkdir "$certs_new"
for name in ca.crt server.crt server.key; do cat "$certs_source/$name" > "$certs_new/$name"; done
chmod 600 "$passwd_new" "$acl_new" "$certs_new/server.key"
chmod 644 "$certs_new/ca.crt" "$certs_new/server.crt"
chmod 700 "$certs_new"
mkdir "$confd_new"
included=""
if [ -d "$confd_source" ]; then
    for file in "$confd_source"/*; do
        [ -f "$file" ] || continue
        name=$(basename "$file")
        [ "$name" != README ] || continue  # (what the directory is for, in the project)
        cat "$file" > "$confd_new/$name"
        chmod 600 "$confd_new/$name"
        included="$included $name"
    done
fi
chmod 700 "$confd_new"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$passwd_new" "$acl_new"
    chown -R mosquitto:mosquitto "$certs_new" "$confd_new"
    if [ -d "$data" ]; then chown -R mosquitto:mosquitto "$data"; fi
fi
mv -f "$passwd_new" "$config/passwd"
mv -f "$acl_new" "$config/acl"
rm -rf "$config/certs"
mv -f "$certs_new" "$config/certs"
rm -rf "$config/conf.d"
mv -f "$confd_new" "$config/conf.d"
echo "mosquitto: password file for" $users "and the ACL and TLS certificates in $config"
if [ -n "$included" ]; then
    echo "mosquitto: included from $confd_source:$included"
fi
exec "$@"
