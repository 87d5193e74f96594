#!/usr/bin/env bash
# A real Postfix on loopback for tests/e2e (the recipe of MTA.md), as root, idempotent: installs
# postfix when missing, configures it, creates the users alice and bob, starts it when stopped.
# Run it again at any time; it changes nothing that is already as it should be.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "postfix.sh: needs root (installs packages, creates users)" >&2
  exit 1
fi

if ! command -v postconf >/dev/null 2>&1; then
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string example.test" | debconf-set-selections
  # A fresh machine has no package lists yet; one update is enough.
  if ! apt-cache show postfix >/dev/null 2>&1; then
    apt-get update -q
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix
fi

# Local delivery only: example.test (alice) and remote.test (bob) are both this machine, and
# nothing can leave it (default and relay transports are errors). Short retry times so that
# the test of a deferred delivery does not wait.
postconf -e myhostname=mx.example.test mydomain=example.test myorigin=example.test \
  'mydestination=example.test, remote.test, localhost' recipient_delimiter=- \
  home_mailbox=Maildir/ mailbox_command= inet_interfaces=loopback-only inet_protocols=ipv4 \
  default_transport=error relay_transport=error relayhost= \
  maillog_file=/var/log/postfix.log queue_run_delay=5s minimal_backoff_time=5s \
  maximal_backoff_time=10s
postconf -F '*/*/chroot = n'
newaliases

for user in alice bob; do
  id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
done

postfix check
if postfix status >/dev/null 2>&1; then
  postfix reload >/dev/null 2>&1
else
  postfix start
fi
