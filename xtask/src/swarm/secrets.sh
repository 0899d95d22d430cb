#!/bin/sh
# Turns the app secrets of the server's .env into Docker secrets, for a release of a Swarm stack.
# cargo xtask runs it over ssh, in the deploy directory, under the deploy lock:
#   sh -c <this script> secrets.sh PROJECT RELEASE_DIR
# Each secret is named after a salted hash of its value (<project>_<name>_<hash>): a Docker secret
# cannot change, so a new value is a new secret and the stack update hands it to new tasks. The
# salt (.secret-salt, 0600) never leaves the server. An unset secret becomes a secret holding a
# newline, which the bot reads as unset. The names go to RELEASE_DIR/secrets.env, which the stack
# file is rendered with. Values pass through shell builtins and pipes only, never argv.
set -eu
project=$1 dir=$2
if [ ! -s .secret-salt ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .secret-salt)
fi
salt=$(cat .secret-salt)
: > "$dir/secrets.env.new"
# <variable in .env>:<secret in swarm.yml>
for pair in DISCORD_TOKEN:discord_token OPENROUTER_API_KEY:openrouter_api_key \
  POSTGRES_PASSWORD:postgres_password LATTICE_NOTIFY_WEBHOOK:notify_webhook; do
  name=${pair%%:*} short=${pair#*:}
  # The last line of .env that sets it, its surrounding quotes removed, as Compose reads it.
  value=$(sed -n "s/^[[:space:]]*$name=//p" .env | tail -n 1)
  case $value in
    \"*\") value=${value#\"} value=${value%\"} ;;
    \'*\') value=${value#\'} value=${value%\'} ;;
  esac
  [ -n "$value" ] || value='
'
  hash=$( (printf '%s' "$salt"; printf '%s' "$value") | sha256sum | cut -c1-12)
  secret=${project}_${short}_$hash
  if ! docker secret inspect "$secret" >/dev/null 2>&1; then
    printf '%s' "$value" | docker secret create --label "lattice.project=$project" "$secret" - >/dev/null
  fi
  echo "LATTICE_SECRET_$(echo "$short" | tr '[:lower:]' '[:upper:]')=$secret" >> "$dir/secrets.env.new"
done
mv "$dir/secrets.env.new" "$dir/secrets.env"
echo "secrets ready"
