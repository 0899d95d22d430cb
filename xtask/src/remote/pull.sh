#!/bin/sh
# Pulls a release's image from a registry that needs a login, with credentials that live only as
# long as this pull. cargo xtask runs it over ssh, in the deploy directory, under the deploy lock,
# the password on standard input:
#   sh -c <this script> pull.sh REGISTRY USER IMAGE
# The login is written to a Docker config directory of this deploy (.docker-pull.XXXXXX, 0700),
# never the user's ~/.docker, and the directory is removed as soon as the pull has ended, failed or
# not. One that a killed deploy left behind is removed first (under the lock, no other deploy is
# using it).
set -eu
registry=$1 user=$2 image=$3
rm -rf .docker-pull.*
config=$PWD/$(mktemp -d .docker-pull.XXXXXX)
trap 'rm -rf "$config"' EXIT
trap 'exit 1' HUP INT TERM
DOCKER_CONFIG=$config docker login --username "$user" --password-stdin "$registry" >/dev/null
DOCKER_CONFIG=$config docker pull --quiet "$image" >/dev/null
echo "pulled $image"
