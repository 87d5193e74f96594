#!/usr/bin/env bash
# Hub mode's end-to-end host, as root, idempotent, after .ci/postfix.sh: Dovecot's LMTP server
# (Debian's dovecot-lmtpd) as the mailbox server downstream of crtool lmtp, a virtual-mail user
# vmail owning the hub's files and mailboxes, Postfix handing the domain hub.test to crtool over
# LMTP (transport_maps), and iproute2 for the tests that make hosts out of network namespaces.
# Run it again at any time; it changes nothing that is already as it should be.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "hub.sh: needs root (installs packages, creates a user, starts Dovecot)" >&2
  exit 1
fi

missing=()
command -v dovecot >/dev/null 2>&1 || missing+=(dovecot-core)
[ -e /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! apt-cache show dovecot-lmtpd >/dev/null 2>&1; then
    apt-get update -q
  fi
  # Debian's policy-rc.d may refuse to start the packaged service; ours is started below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

id vmail >/dev/null 2>&1 || useradd --system --home-dir /srv/crtool-e2e --shell /usr/sbin/nologin vmail
install -d -o vmail -g vmail -m 0755 /srv/crtool-e2e /srv/crtool-e2e/mail
install -d -o vmail -g vmail -m 0755 /run/crtool-e2e

# A Dovecot instance of its own (config, base_dir and log apart from the packaged one): LMTP
# only, every user virtual under vmail, Maildir in /srv/crtool-e2e/mail/<local part>.
install -d -m 0755 /etc/crtool-e2e
cat > /etc/crtool-e2e/dovecot.conf.new <<'CONF'
protocols = lmtp
base_dir = /run/crtool-e2e-dovecot
state_dir = /var/lib/crtool-e2e-dovecot
log_path = /var/log/crtool-e2e-dovecot.log
ssl = no
mail_location = maildir:~/Maildir
postmaster_address = postmaster@hub.test
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=/srv/crtool-e2e/mail/%n
}
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
CONF
if ! cmp -s /etc/crtool-e2e/dovecot.conf.new /etc/crtool-e2e/dovecot.conf; then
  mv /etc/crtool-e2e/dovecot.conf.new /etc/crtool-e2e/dovecot.conf
  doveadm -c /etc/crtool-e2e/dovecot.conf stop >/dev/null 2>&1 || true
else
  rm /etc/crtool-e2e/dovecot.conf.new
fi
install -d -m 0755 /var/lib/crtool-e2e-dovecot
if ! doveadm -c /etc/crtool-e2e/dovecot.conf service status >/dev/null 2>&1 \
    || [ ! -S /run/crtool-e2e-dovecot/lmtp ]; then
  dovecot -c /etc/crtool-e2e/dovecot.conf
fi

# Postfix: mail for hub.test goes to crtool lmtp's socket (the tests start crtool lmtp).
transport=/etc/postfix/crtool-transport
echo "hub.test lmtp:unix:/run/crtool-e2e/lmtp.sock" > "$transport.new"
if ! cmp -s "$transport.new" "$transport"; then
  mv "$transport.new" "$transport"
else
  rm "$transport.new"
fi
postmap "$transport"
destinations="$(postconf -h mydestination)"
case ", $destinations," in
  *", hub.test,"*) ;;
  *) postconf -e "mydestination=$destinations, hub.test" ;;
esac
postconf -e "transport_maps=hash:$transport" lmtp_destination_recipient_limit=50
postfix reload >/dev/null 2>&1 || postfix start
