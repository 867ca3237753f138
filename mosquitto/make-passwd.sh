#!/usr/bin/env bash
# Make Mosquitto's password file for the four roles (bridge, services, viewer, integration), for a
# broker you run yourself. (compose.yaml does not use this script: its Mosquitto makes the password
# file from .env at every start, mosquitto/compose-entrypoint.sh.)
#
#   mosquitto/make-passwd.sh PASSWD_FILE [SECRETS_ENV_FILE]
#
# Passwords come from UNS_MQTT_BRIDGE_PASSWORD, UNS_MQTT_SERVICES_PASSWORD,
# UNS_MQTT_VIEWER_PASSWORD and UNS_MQTT_INTEGRATION_PASSWORD; any that is unset is generated. The
# passwords are written, readable by the owner only, to SECRETS_ENV_FILE (default:
# mosquitto/secrets.env, ignored by git), for you to give each service its own (as UNS_MQTT_PASSWORD).
# Nothing secret is ever printed or committed.
set -euo pipefail
passwd_file=${1:?usage: make-passwd.sh PASSWD_FILE [SECRETS_ENV_FILE]}
secrets=${2:-"$(dirname "$0")/secrets.env"}
command -v mosquitto_passwd >/dev/null || { echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }
gen() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }
bridge=${UNS_MQTT_BRIDGE_PASSWORD:-$(gen)}
services=${UNS_MQTT_SERVICES_PASSWORD:-$(gen)}
viewer=${UNS_MQTT_VIEWER_PASSWORD:-$(gen)}
integration=${UNS_MQTT_INTEGRATION_PASSWORD:-$(gen)}
umask 077
: > "$passwd_file"
mosquitto_passwd -b "$passwd_file" bridge "$bridge"
mosquitto_passwd -b "$passwd_file" services "$services"
mosquitto_passwd -b "$passwd_file" viewer "$viewer"
mosquitto_passwd -b "$passwd_file" integration "$integration"
cat > "$secrets" <<ENV
UNS_MQTT_BRIDGE_PASSWORD=$bridge
UNS_MQTT_SERVICES_PASSWORD=$services
UNS_MQTT_VIEWER_PASSWORD=$viewer
UNS_MQTT_INTEGRATION_PASSWORD=$integration
ENV
# Mosquitto drops to the mosquitto user when started as root: let it read the password file.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then chown mosquitto: "$passwd_file"; fi
echo "wrote $passwd_file and $secrets"
