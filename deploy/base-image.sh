#!/usr/bin/env bash
# The Python 3.11 base image deploy/Dockerfile builds on (build arg PYTHON_IMAGE), for machines that cannot pull
# from an image registry. Prints the image name to use on stdout; progress goes to stderr.
#
#   PYTHON_IMAGE=$(deploy/base-image.sh)
#   DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t tokshard .
#
# In order: the image named by $PYTHON_IMAGE (default python:3.11-slim-bookworm) if it is already local; else a
# `docker pull` of it; else (no registry reachable) a Debian bookworm root filesystem made from Debian packages with
# debootstrap and `docker import`ed as $LOCAL_IMAGE (default tokshard-base:python3.11-bookworm), reused when it
# exists. The fallback needs root and debootstrap (Debian/Ubuntu: apt-get install debootstrap) and a Debian mirror
# ($DEBIAN_MIRROR, default http://deb.debian.org/debian). TOKSHARD_BASE=debootstrap skips the pull.
set -euo pipefail

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
LOCAL_IMAGE=${LOCAL_IMAGE:-tokshard-base:python3.11-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap and chroot live there; a non-login root shell may lack them

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if have "$PYTHON_IMAGE"; then echo "$PYTHON_IMAGE"; exit 0; fi
if [ "${TOKSHARD_BASE:-}" != debootstrap ] && timeout 120 "$DOCKER" pull -q "$PYTHON_IMAGE" >&2; then
    echo "$PYTHON_IMAGE"; exit 0
fi
if have "$LOCAL_IMAGE"; then echo "$LOCAL_IMAGE"; exit 0; fi

if [ "$(id -u)" != 0 ]; then
    echo "base-image.sh: cannot pull $PYTHON_IMAGE and building $LOCAL_IMAGE with debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "base-image.sh: cannot pull $PYTHON_IMAGE; install debootstrap (apt-get install debootstrap) to build" \
         "$LOCAL_IMAGE from Debian packages" >&2
    exit 1
}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/tokshard-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "base-image.sh: no $PYTHON_IMAGE; building $LOCAL_IMAGE from Debian bookworm packages ($DEBIAN_MIRROR)" >&2
# python-is-python3: the Dockerfile (like the official image) calls `python`; passwd: useradd; python3.11-venv:
# `python -m venv` with pip inside (python3-distutils: its dependency, which debootstrap does not resolve).
debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates,passwd \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
# Only what a container needs: apt's downloaded packages, lists and docs go (the image stays ~200 MB).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/*
tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$LOCAL_IMAGE" >&2
echo "$LOCAL_IMAGE"
