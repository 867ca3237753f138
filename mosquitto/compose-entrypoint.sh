#!/bin/sh
# compose.yaml's entrypoint for Mosquitto (the eclipse-mosquitto:2.0 image; POSIX sh, busybox there):
# at every start, make the password file from the environment and put the ACL beside it, then run
# the command given (Mosquitto). Changing a password in .env and `docker compose up -d` applies it.
#
#   compose-entrypoint.sh COMMAND [ARGS...]
#
# Passwords: UNS_MQTT_BRIDGE_PASSWORD, UNS_MQTT_SERVICES_PASSWORD, UNS_MQTT_VIEWER_PASSWORD and
# UNS_MQTT_INTEGRATION_PASSWORD, each required. Nothing secret is printed. Both files are mode 600
# and, when started as root, owned by the mosquitto user: Mosquitto reads them after it has dropped
# from root to that user.
#
# Where (defaults for the image): UNS_MOSQUITTO_CONFIG_DIR (/mosquitto/config: passwd and acl are
# written there), UNS_MOSQUITTO_ACL_SOURCE (/uns/acl: the project's mosquitto/acl, mounted read-only),
# UNS_MOSQUITTO_DATA_DIR (/mosquitto/data: handed to the mosquitto user).
set -eu

config=${UNS_MOSQUITTO_CONFIG_DIR:-/mosquitto/config}
acl_source=${UNS_MOSQUITTO_ACL_SOURCE:-/uns/acl}
data=${UNS_MOSQUITTO_DATA_DIR:-/mosquitto/data}

missing=""
require() { [ -n "$2" ] || missing="$missing $1"; }
require UNS_MQTT_BRIDGE_PASSWORD "${UNS_MQTT_BRIDGE_PASSWORD:-}"
require UNS_MQTT_SERVICES_PASSWORD "${UNS_MQTT_SERVICES_PASSWORD:-}"
require UNS_MQTT_VIEWER_PASSWORD "${UNS_MQTT_VIEWER_PASSWORD:-}"
require UNS_MQTT_INTEGRATION_PASSWORD "${UNS_MQTT_INTEGRATION_PASSWORD:-}"
if [ -n "$missing" ]; then
    echo "mosquitto: set$missing (see .env.example); not starting" >&2
    exit 1
fi
if [ ! -r "$acl_source" ]; then
    echo "mosquitto: cannot read the ACL $acl_source; not starting" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    echo "usage: compose-entrypoint.sh COMMAND [ARGS...]" >&2
    exit 2
fi

umask 077
passwd_new="$config/passwd.new"
acl_new="$config/acl.new"
rm -f "$passwd_new" "$acl_new"
: > "$passwd_new"
mosquitto_passwd -b "$passwd_new" bridge "$UNS_MQTT_BRIDGE_PASSWORD"
mosquitto_passwd -b "$passwd_new" services "$UNS_MQTT_SERVICES_PASSWORD"
mosquitto_passwd -b "$passwd_new" viewer "$UNS_MQTT_VIEWER_PASSWORD"
mosquitto_passwd -b "$passwd_new" integration "$UNS_MQTT_INTEGRATION_PASSWORD"
cat "$acl_source" > "$acl_new"
chmod 600 "$passwd_new" "$acl_new"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$passwd_new" "$acl_new"
    if [ -d "$data" ]; then chown -R mosquitto:mosquitto "$data"; fi
fi
mv -f "$passwd_new" "$config/passwd"
mv -f "$acl_new" "$config/acl"
echo "mosquitto: password file for bridge, services, viewer, integration and the ACL in $config"
exec "$@"
