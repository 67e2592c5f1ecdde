# A machine for tests/deploy/test_ray_up.py: what deploy/cluster-onprem.yaml asks of a node (SSH for user
# `tokshard`, rsync, Python >= 3.11 with venv, pip able to reach its index) and nothing of tokshard: `ray up`
# installs that. The test mounts the SSH public key and the CA bundle pip trusts (networks that intercept TLS).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS node
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server rsync \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash tokshard \
    && mkdir -p /run/sshd /shared /home/tokshard/.ssh /home/tokshard/.cache/pip \
    && chown -R tokshard:tokshard /shared /home/tokshard \
    && chmod 700 /home/tokshard/.ssh \
    && printf '[global]\ncert = /etc/pip-ca.crt\n' > /etc/pip.conf \
    && printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' >> /etc/ssh/sshd_config
EXPOSE 22
CMD ["sh", "-c", "ssh-keygen -A && exec /usr/sbin/sshd -D -e"]
